//! The crate's top-level error, folding each module's errors.
