//! Regular expressions from configuration (blacklists, device entries,
//! `weightedpath` rules), compiled with a size cap so a hostile file
//! cannot make compilation take unbounded memory. Pure; a leaf.

use regex::{Regex, RegexBuilder};

/// Compiled-size cap of one expression.
const SIZE_LIMIT: usize = 1 << 20;

/// Compiles `expr` within the cap; the error is the regex crate's message
/// cut to its last line (its messages span several).
pub fn compile(expr: &str) -> Result<Regex, String> {
    RegexBuilder::new(expr)
        .size_limit(SIZE_LIMIT)
        .dfa_size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let msg = e.to_string();
            msg.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid expression")
                .trim()
                .trim_start_matches("error: ")
                .to_string()
        })
}
