//! Path checkers.
