//! Lexer and parser for the multipath.conf syntax, producing a syntax tree
//! whose nodes carry spans, and a printer for that tree.
//!
//! The syntax (see multipath.conf(5)) is line oriented:
//!
//! * `name {` opens a section; the `{` must be on the same line as the name.
//! * `}` closes the innermost open section; it must be alone on its line.
//! * `keyword value` sets an attribute. The value is one bare word (no
//!   whitespace, `"`, `#`, `!`, `{` or `}`) or one double-quoted string.
//!   Inside quotes whitespace, `#` and `!` are ordinary characters and `""`
//!   stands for one literal `"`; there are no other escapes. A quoted
//!   string ends on the line where it starts.
//! * Outside quotes, `#` and `!` start a comment that runs to the end of
//!   the line.
//!
//! The parser knows nothing about keywords except which names are always
//! sections (to say "missing '{'" rather than "missing value"); meaning is
//! given by the private `build` module. It never panics, does not recurse, caps the
//! nesting depth at [`MAX_DEPTH`] and keeps going after errors so that one
//! run reports as many problems as possible.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use super::diag::{Diagnostic, Diags, Span};
use super::keywords::is_section_keyword;

/// Deepest allowed section nesting (top-level sections are at depth 1).
/// multipath.conf itself needs 2 (`devices { device { } }`).
pub const MAX_DEPTH: usize = 8;

/// An attribute value as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The value with quotes removed and `""` turned into `"`.
    pub text: String,
    /// Whether it was written in double quotes.
    pub quoted: bool,
}

/// `keyword value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub key: String,
    pub value: Value,
    pub span: Span,
}

/// `name { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub name: String,
    pub items: Vec<Item>,
    /// The line with the opening brace.
    pub span: Span,
    /// The line with the closing brace (the last line of the file if the
    /// block was never closed).
    pub end_line: u32,
}

/// One entry of a section (or of the top level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Attr(Attr),
    Block(Block),
}

impl Item {
    pub fn span(&self) -> &Span {
        match self {
            Item::Attr(a) => &a.span,
            Item::Block(b) => &b.span,
        }
    }
}

/// A parsed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub file: Arc<str>,
    pub items: Vec<Item>,
}

/// Parses `text` (named `file` in diagnostics). Returns the tree, which is
/// as complete as recovery allowed, and the syntax diagnostics.
pub fn parse(text: &str, file: &str) -> (Document, Vec<Diagnostic>) {
    let file: Arc<str> = Arc::from(file);
    let mut diags = Diags::new();
    let doc = parse_into(text, &file, &mut diags);
    (doc, diags.into_vec())
}

#[derive(Debug, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a str),
    Quoted(String),
    Open,
    Close,
}

impl Tok<'_> {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Quoted(q) => format!("\"{}\"", q.replace('"', "\"\"")),
            Tok::Open => "'{'".to_string(),
            Tok::Close => "'}'".to_string(),
        }
    }
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\x0b' | '\x0c')
}

/// A character that may appear in a bare word.
fn is_word_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '"' | '#' | '!' | '{' | '}')
}

fn describe_char(c: char) -> String {
    if c.is_control() || !c.is_ascii() {
        format!("U+{:04X}", c as u32)
    } else {
        format!("'{c}'")
    }
}

/// Splits one line into tokens. At most one lexical error is reported per
/// line; lexing continues past it so braces are still seen.
fn lex_line<'a>(line: &'a str, span: &Span, diags: &mut Diags) -> Vec<Tok<'a>> {
    let mut toks = Vec::new();
    let mut reported = false;
    let mut report = |diags: &mut Diags, msg: String| {
        if !reported {
            reported = true;
            diags.error(span, msg);
        }
    };
    let bytes_len = line.len();
    let mut it = line.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            c if is_space(c) => {}
            '#' | '!' => break,
            '{' => toks.push(Tok::Open),
            '}' => toks.push(Tok::Close),
            '"' => {
                let mut s = String::new();
                let mut closed = false;
                while let Some((_, q)) = it.next() {
                    if q == '"' {
                        if matches!(it.peek(), Some((_, '"'))) {
                            it.next();
                            s.push('"');
                        } else {
                            closed = true;
                            break;
                        }
                    } else if q.is_control() && q != '\t' {
                        report(
                            diags,
                            format!("control character {} in quoted string", describe_char(q)),
                        );
                    } else {
                        s.push(q);
                    }
                }
                if !closed {
                    report(diags, "unterminated quoted string (missing '\"')".into());
                }
                toks.push(Tok::Quoted(s));
            }
            c if is_word_char(c) => {
                let mut end = bytes_len;
                while let Some(&(j, d)) = it.peek() {
                    if is_word_char(d) {
                        it.next();
                    } else {
                        end = j;
                        break;
                    }
                }
                toks.push(Tok::Word(&line[i..end]));
            }
            other => {
                report(
                    diags,
                    format!(
                        "unexpected character {} outside quotes",
                        describe_char(other)
                    ),
                );
            }
        }
    }
    toks
}

struct Parser<'d> {
    file: Arc<str>,
    diags: &'d mut Diags,
    root: Vec<Item>,
    stack: Vec<Block>,
    /// Nesting depth of sections whose contents are being skipped (too deep,
    /// or a stray `{`); while > 0, lines only adjust this count.
    discard: usize,
    discard_start: u32,
}

impl Parser<'_> {
    fn span(&self, line: u32) -> Span {
        Span::new(&self.file, line)
    }

    fn push_item(&mut self, item: Item) {
        match self.stack.last_mut() {
            Some(b) => b.items.push(item),
            None => self.root.push(item),
        }
    }

    fn open(&mut self, name: &str, line: u32) {
        if self.discard > 0 {
            self.discard += 1;
            return;
        }
        if self.stack.len() >= MAX_DEPTH {
            let span = self.span(line);
            self.diags.error(
                &span,
                format!(
                    "section '{name}' is nested too deeply (at most {MAX_DEPTH} levels); \
                     its contents are ignored"
                ),
            );
            self.start_discard(line);
            return;
        }
        self.stack.push(Block {
            name: name.to_string(),
            items: Vec::new(),
            span: self.span(line),
            end_line: line,
        });
    }

    fn start_discard(&mut self, line: u32) {
        self.discard = 1;
        self.discard_start = line;
    }

    fn close(&mut self, line: u32) {
        if self.discard > 0 {
            self.discard -= 1;
            return;
        }
        match self.stack.pop() {
            Some(mut b) => {
                b.end_line = line;
                self.push_item(Item::Block(b));
            }
            None => {
                let span = self.span(line);
                self.diags
                    .error(&span, "unmatched '}' (no section is open)".to_string());
            }
        }
    }

    fn line(&mut self, toks: Vec<Tok<'_>>, line: u32) {
        let span = self.span(line);
        let mut toks = toks.into_iter();
        let Some(first) = toks.next() else { return };
        let rest: Vec<Tok<'_>> = toks.collect();
        match first {
            Tok::Close => {
                if let Some(t) = rest.first() {
                    self.diags.error(
                        &span,
                        format!(
                            "unexpected {} after '}}' (a closing brace must be alone on its line)",
                            t.describe()
                        ),
                    );
                }
                self.close(line);
            }
            Tok::Open => {
                if self.discard > 0 {
                    self.discard += 1;
                    return;
                }
                self.diags.error(
                    &span,
                    "unexpected '{' (an opening brace must follow a section name on the same line)",
                );
                self.start_discard(line);
            }
            Tok::Quoted(q) => {
                if self.discard > 0 {
                    self.count_braces(&rest, line);
                    return;
                }
                self.diags.error(
                    &span,
                    format!(
                        "expected a keyword at the start of the line, found quoted string \"{}\"",
                        q.replace('"', "\"\"")
                    ),
                );
                self.count_braces(&rest, line);
            }
            Tok::Word(key) => {
                if self.discard > 0 {
                    self.count_braces(&rest, line);
                    return;
                }
                self.keyword_line(key, rest, line);
            }
        }
    }

    /// Keeps brace balance for a line that is otherwise ignored: a `{`
    /// starts (or deepens) a skipped section, a `}` ends one.
    fn count_braces(&mut self, toks: &[Tok<'_>], line: u32) {
        for t in toks {
            match t {
                Tok::Open if self.discard > 0 => self.discard += 1,
                Tok::Open => self.start_discard(line),
                Tok::Close if self.discard > 0 => self.discard -= 1,
                _ => {}
            }
        }
    }

    fn keyword_line(&mut self, key: &str, rest: Vec<Tok<'_>>, line: u32) {
        let span = self.span(line);
        let mut rest = rest.into_iter();
        match rest.next() {
            None => {
                if is_section_keyword(key) {
                    self.diags.error(
                        &span,
                        format!(
                            "missing '{{' after section name '{key}' (it must be on the same line)"
                        ),
                    );
                } else {
                    self.diags
                        .error(&span, format!("missing value for keyword '{key}'"));
                }
            }
            Some(Tok::Open) => {
                if let Some(t) = rest.next() {
                    self.diags.error(
                        &span,
                        format!(
                            "unexpected {} after '{{' (a section's contents start on the next line)",
                            t.describe()
                        ),
                    );
                }
                self.open(key, line);
            }
            Some(Tok::Close) => {
                self.diags.error(
                    &span,
                    format!(
                        "unexpected '}}' after '{key}' (a closing brace must be alone on its line)"
                    ),
                );
            }
            Some(Tok::Word(w)) => {
                let value = Value {
                    text: w.to_string(),
                    quoted: false,
                };
                self.attr_line(key, value, rest.collect(), line);
            }
            Some(Tok::Quoted(q)) => {
                let value = Value {
                    text: q,
                    quoted: true,
                };
                self.attr_line(key, value, rest.collect(), line);
            }
        }
    }

    fn attr_line(&mut self, key: &str, value: Value, rest: Vec<Tok<'_>>, line: u32) {
        let span = self.span(line);
        if is_section_keyword(key) {
            let found = if value.quoted {
                Tok::Quoted(value.text)
            } else {
                Tok::Word(&value.text)
            }
            .describe();
            self.diags.error(
                &span,
                format!("expected '{{' after section name '{key}', found {found}"),
            );
            if rest.contains(&Tok::Open) {
                self.open(key, line);
            }
            return;
        }
        if let Some(t) = rest.first() {
            match t {
                Tok::Open | Tok::Close => self.diags.error(
                    &span,
                    format!(
                        "unexpected {} after the value of '{key}' (braces must be on \
                         their own lines)",
                        t.describe()
                    ),
                ),
                _ => self.diags.warning(
                    &span,
                    format!(
                        "ignoring extra data starting with {} after the value of '{key}' \
                         (quote values that contain spaces)",
                        t.describe()
                    ),
                ),
            }
        }
        self.push_item(Item::Attr(Attr {
            key: key.to_string(),
            value,
            span,
        }));
    }

    fn finish(mut self, last_line: u32) -> Document {
        if self.discard > 0 {
            let span = self.span(self.discard_start);
            self.diags
                .error(&span, "ignored section is not closed (missing '}')");
        }
        while let Some(mut b) = self.stack.pop() {
            self.diags.error(
                &b.span,
                format!("section '{}' is not closed (missing '}}')", b.name),
            );
            b.end_line = last_line;
            self.push_item(Item::Block(b));
        }
        Document {
            file: self.file,
            items: self.root,
        }
    }
}

pub(crate) fn parse_into(text: &str, file: &Arc<str>, diags: &mut Diags) -> Document {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut p = Parser {
        file: Arc::clone(file),
        diags,
        root: Vec::new(),
        stack: Vec::new(),
        discard: 0,
        discard_start: 0,
    };
    let mut last_line = 0u32;
    for (idx, raw) in text.split('\n').enumerate() {
        let line_no = u32::try_from(idx + 1).unwrap_or(u32::MAX);
        last_line = line_no;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let span = p.span(line_no);
        let toks = lex_line(line, &span, p.diags);
        p.line(toks, line_no);
        if p.diags.full() {
            break;
        }
    }
    p.finish(last_line)
}

/// Whether a value must be quoted to survive a round trip.
fn needs_quotes(s: &str) -> bool {
    s.is_empty() || !s.chars().all(is_word_char)
}

/// Writes `s` as a multipath.conf value, quoting it if needed (or if
/// `force`), doubling embedded quotes.
pub fn quote_value(s: &str, force: bool) -> String {
    if force || needs_quotes(s) {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            if c == '"' {
                out.push_str("\"\"");
            } else {
                out.push(c);
            }
        }
        out.push('"');
        out
    } else {
        s.to_string()
    }
}

fn write_items(out: &mut String, items: &[Item], depth: usize) -> fmt::Result {
    for item in items {
        for _ in 0..depth {
            out.push('\t');
        }
        match item {
            Item::Attr(a) => {
                writeln!(
                    out,
                    "{} {}",
                    a.key,
                    quote_value(&a.value.text, a.value.quoted)
                )?;
            }
            Item::Block(b) => {
                writeln!(out, "{} {{", b.name)?;
                write_items(out, &b.items, depth + 1)?;
                for _ in 0..depth {
                    out.push('\t');
                }
                out.push_str("}\n");
            }
        }
    }
    Ok(())
}

impl fmt::Display for Document {
    /// Prints the tree in multipath.conf syntax (tab indented, comments
    /// are not kept). Parsing the output gives the same tree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        write_items(&mut out, &self.items, 0)?;
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diag::Severity;

    fn p(text: &str) -> (Document, Vec<Diagnostic>) {
        parse(text, "t.conf")
    }

    fn attr(item: &Item) -> (&str, &str, bool, u32) {
        match item {
            Item::Attr(a) => (&a.key, &a.value.text, a.value.quoted, a.span.line),
            Item::Block(b) => panic!("expected attr, got block {}", b.name),
        }
    }

    fn block(item: &Item) -> &Block {
        match item {
            Item::Block(b) => b,
            Item::Attr(a) => panic!("expected block, got attr {}", a.key),
        }
    }

    fn errors(d: &[Diagnostic]) -> Vec<(u32, String)> {
        d.iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| (d.line, d.message.clone()))
            .collect()
    }

    #[test]
    fn comments_and_blank_lines() {
        let (doc, d) = p("# comment\n\n! also a comment\ndefaults {\n  verbosity 3 # trailing\n  polling_interval 10! bang\n}\n");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(doc.items.len(), 1);
        let b = block(&doc.items[0]);
        assert_eq!(b.name, "defaults");
        assert_eq!(b.span.line, 4);
        assert_eq!(b.end_line, 7);
        assert_eq!(attr(&b.items[0]), ("verbosity", "3", false, 5));
        assert_eq!(attr(&b.items[1]), ("polling_interval", "10", false, 6));
    }

    #[test]
    fn quoting() {
        let (doc, d) = p(concat!(
            "defaults {\n",
            "  path_selector \"round-robin 0\"\n",
            "  alias_prefix \"a#b!c\"\n",
            "  prio_args \"2.5\"\" SSD\"\n",
            "  features \"\"\n",
            "  uid_attribute \"\"\"\"\n",
            "  prio\"const\"\n",
            "}\n"
        ));
        assert!(d.is_empty(), "{d:?}");
        let b = block(&doc.items[0]);
        assert_eq!(attr(&b.items[0]).1, "round-robin 0");
        assert_eq!(attr(&b.items[1]).1, "a#b!c");
        assert_eq!(attr(&b.items[2]).1, "2.5\" SSD");
        assert_eq!(attr(&b.items[3]), ("features", "", true, 5));
        assert_eq!(attr(&b.items[4]).1, "\"");
        assert_eq!(attr(&b.items[5]), ("prio", "const", true, 7));
    }

    #[test]
    fn nesting_and_crlf() {
        let (doc, d) =
            p("devices {\r\n\tdevice {\r\n\t\tvendor \"X\"\r\n\t}\r\n\tdevice {\r\n\t}\r\n}\r\n");
        assert!(d.is_empty(), "{d:?}");
        let devs = block(&doc.items[0]);
        assert_eq!(devs.items.len(), 2);
        let d0 = block(&devs.items[0]);
        assert_eq!(d0.span.line, 2);
        assert_eq!(attr(&d0.items[0]), ("vendor", "X", true, 3));
    }

    #[test]
    fn brace_without_space() {
        let (doc, d) = p("defaults{\nverbosity 2\n}");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(block(&doc.items[0]).items.len(), 1);
    }

    #[test]
    fn unbalanced_open() {
        let (_, d) = p("defaults {\n  verbosity 2\ndevices {\n");
        assert_eq!(
            errors(&d),
            vec![
                (
                    3,
                    "section 'devices' is not closed (missing '}')".to_string()
                ),
                (
                    1,
                    "section 'defaults' is not closed (missing '}')".to_string()
                ),
            ]
        );
    }

    #[test]
    fn unmatched_close() {
        let (_, d) = p("defaults {\n}\n}\n");
        assert_eq!(
            errors(&d),
            vec![(3, "unmatched '}' (no section is open)".to_string())]
        );
    }

    #[test]
    fn unterminated_quote() {
        let (doc, d) = p("defaults {\n  prio \"const\n}\n");
        assert_eq!(
            errors(&d),
            vec![(2, "unterminated quoted string (missing '\"')".to_string())]
        );
        // Recovery keeps the structure.
        assert_eq!(block(&doc.items[0]).items.len(), 1);
    }

    #[test]
    fn missing_value_and_missing_brace() {
        let (_, d) = p("defaults {\n  rr_min_io\n}\ndevices\n");
        assert_eq!(
            errors(&d),
            vec![
                (2, "missing value for keyword 'rr_min_io'".to_string()),
                (
                    4,
                    "missing '{' after section name 'devices' (it must be on the same line)"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn brace_on_next_line_is_an_error_but_balanced() {
        let (_, d) = p("defaults\n{\n  verbosity 2\n}\ndevices {\n}\n");
        let e = errors(&d);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].0, 1);
        assert_eq!(e[1].0, 2);
        assert!(e[1].1.contains("unexpected '{'"));
    }

    #[test]
    fn junk() {
        let (_, d) = p("defaults {\n  \u{1}\u{2} verbosity 2\n}\n\"quoted\" key\n");
        let e = errors(&d);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].0, 2);
        assert!(e[0].1.contains("U+0001"), "{e:?}");
        assert_eq!(e[1].0, 4);
        assert!(e[1].1.contains("expected a keyword"));
    }

    #[test]
    fn stray_block_after_junk_keeps_balance() {
        let (doc, d) = p("defaults {\n\"x\" {\n  a b\n}\nverbosity 2\n}\n");
        let e = errors(&d);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, 2);
        // The skipped block's '}' does not close 'defaults'.
        let b = block(&doc.items[0]);
        assert_eq!(b.end_line, 6);
        assert_eq!(attr(&b.items[0]).0, "verbosity");
    }

    #[test]
    fn one_line_block_is_an_error() {
        let (_, d) = p("devices {\n device { vendor \"X\" }\n}\n");
        let e = errors(&d);
        assert_eq!(e[0].0, 2);
        assert!(e[0].1.contains("after '{'"), "{e:?}");
    }

    #[test]
    fn extra_data_is_a_warning() {
        let (doc, d) = p("defaults {\n path_selector round-robin 0\n}\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].severity, Severity::Warning);
        assert_eq!(d[0].line, 2);
        assert!(d[0].message.contains("'0'"));
        assert_eq!(attr(&block(&doc.items[0]).items[0]).1, "round-robin");
    }

    #[test]
    fn value_for_section_keyword() {
        let (_, d) = p("devices foo\n");
        assert_eq!(
            errors(&d),
            vec![(
                1,
                "expected '{' after section name 'devices', found 'foo'".to_string()
            )]
        );
    }

    #[test]
    fn depth_cap() {
        let mut text = String::new();
        for i in 0..12 {
            text.push_str(&format!("s{i} {{\n"));
        }
        text.push_str("k v\n");
        for _ in 0..12 {
            text.push_str("}\n");
        }
        text.push_str("after 1\n");
        let (doc, d) = p(&text);
        let e = errors(&d);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, 9);
        assert!(e[0].1.contains("nested too deeply"));
        // The top-level attribute after the deep section is still seen.
        assert_eq!(attr(doc.items.last().unwrap()).0, "after");
    }

    #[test]
    fn deep_nesting_is_not_recursive() {
        let n = 200_000;
        let text = "a {\n".repeat(n) + &"}\n".repeat(n);
        let (_, d) = p(&text);
        assert_eq!(errors(&d).len(), 1);
    }

    #[test]
    fn print_round_trip() {
        let text = "defaults {\n\tpath_selector \"round-robin 0\"\n\tverbosity 2\n\tx \"a\"\"b\"\n}\ndevices {\n\tdevice {\n\t\tvendor \"OSNEXUS\"\n\t}\n}\n";
        let (doc, d) = p(text);
        assert!(d.is_empty());
        assert_eq!(doc.to_string(), text);
    }

    #[test]
    fn quote_value_rules() {
        assert_eq!(quote_value("abc", false), "abc");
        assert_eq!(quote_value("abc", true), "\"abc\"");
        assert_eq!(quote_value("", false), "\"\"");
        assert_eq!(quote_value("a b", false), "\"a b\"");
        assert_eq!(quote_value("a\"b", false), "\"a\"\"b\"");
        assert_eq!(quote_value("a#", false), "\"a#\"");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// A tree without spans, for comparing parse results.
    #[derive(Debug, Clone, PartialEq)]
    enum Shape {
        Attr(String, String),
        Block(String, Vec<Shape>),
    }

    fn shape(items: &[Item]) -> Vec<Shape> {
        items
            .iter()
            .map(|i| match i {
                Item::Attr(a) => Shape::Attr(a.key.clone(), a.value.text.clone()),
                Item::Block(b) => Shape::Block(b.name.clone(), shape(&b.items)),
            })
            .collect()
    }

    fn to_items(shapes: &[Shape], file: &Arc<str>) -> Vec<Item> {
        shapes
            .iter()
            .map(|s| match s {
                Shape::Attr(k, v) => Item::Attr(Attr {
                    key: k.clone(),
                    value: Value {
                        text: v.clone(),
                        quoted: false,
                    },
                    span: Span::new(file, 0),
                }),
                Shape::Block(n, c) => Item::Block(Block {
                    name: n.clone(),
                    items: to_items(c, file),
                    span: Span::new(file, 0),
                    end_line: 0,
                }),
            })
            .collect()
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-z_][a-z0-9_]{0,15}".prop_filter("section keyword", |k| !is_section_keyword(k))
    }

    fn value() -> impl Strategy<Value = String> {
        // Printable text including quotes, comment characters, braces,
        // spaces and non-ASCII.
        "[ -~äöü€]{0,24}"
    }

    fn tree() -> impl Strategy<Value = Vec<Shape>> {
        let attr = (key(), value()).prop_map(|(k, v)| Shape::Attr(k, v));
        let leaf = prop::collection::vec(attr, 0..4);
        leaf.prop_recursive(MAX_DEPTH as u32 - 1, 64, 6, |inner| {
            prop::collection::vec(
                prop_oneof![
                    (key(), value()).prop_map(|(k, v)| Shape::Attr(k, v)),
                    ("[a-z_]{1,10}", inner).prop_map(|(n, c)| Shape::Block(n, c)),
                ],
                0..6,
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text, "fuzz");
            let _ = crate::config::parse_str(&text, "fuzz");
        }

        #[test]
        fn config_like_text_never_panics(text in "([a-z_ \"{}#!\t\n0-9]|defaults|devices|device|vendor|paths|path|multipaths|multipath|wwid|blacklist|rr_min_io|failback){0,200}") {
            let _ = parse(&text, "fuzz");
            let _ = crate::config::parse_str(&text, "fuzz");
        }

        #[test]
        fn print_parse_round_trip(t in tree()) {
            let file: Arc<str> = Arc::from("rt");
            let doc = Document { file: Arc::clone(&file), items: to_items(&t, &file) };
            let printed = doc.to_string();
            let (back, diags) = parse(&printed, "rt");
            prop_assert!(diags.is_empty(), "{:?}\n{}", diags, printed);
            prop_assert_eq!(shape(&back.items), t);
            // Printing the reparsed tree is stable.
            prop_assert_eq!(back.to_string(), printed);
        }
    }
}
