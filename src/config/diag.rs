//! Diagnostics (errors and warnings with file and line) and source spans.

use std::fmt;
use std::sync::Arc;

/// Where something came from: a file name and a 1-based line number.
///
/// Line 0 means "the file as a whole" (e.g. it could not be read) or, for
/// built-in data, "no line".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub file: Arc<str>,
    pub line: u32,
}

impl Span {
    pub fn new(file: &Arc<str>, line: u32) -> Self {
        Span {
            file: Arc::clone(file),
            line,
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}", self.file, self.line)
        }
    }
}

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// The configuration is not loaded.
    Error,
    /// The configuration is loaded; the daemon should log this.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One message about a configuration file.
///
/// Displayed as `FILE:LINE: error: message` (or `warning:`); with line 0
/// as `FILE: error: message`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    pub fn error(span: &Span, message: impl Into<String>) -> Self {
        Self::at(span, Severity::Error, message)
    }

    pub fn warning(span: &Span, message: impl Into<String>) -> Self {
        Self::at(span, Severity::Warning, message)
    }

    pub fn at(span: &Span, severity: Severity, message: impl Into<String>) -> Self {
        Diagnostic {
            file: span.file.to_string(),
            line: span.line,
            severity,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}: {}", self.file, self.severity, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.severity, self.message
            )
        }
    }
}

/// Most errors, and separately most warnings, kept for one file. Past the
/// error cap one final error says so and parsing stops (binary junk would
/// otherwise produce millions); past the warning cap the remaining
/// warnings are counted in one final warning and loading goes on.
pub const MAX_DIAGNOSTICS: usize = 200;

/// A diagnostics collector with caps.
#[derive(Debug, Default)]
pub(crate) struct Diags {
    list: Vec<Diagnostic>,
    errors: usize,
    warnings: usize,
    errors_truncated: bool,
    dropped_warnings: usize,
    last_file: Option<String>,
}

impl Diags {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, d: Diagnostic) {
        if self.last_file.as_deref() != Some(d.file.as_str()) {
            self.last_file = Some(d.file.clone());
        }
        match d.severity {
            Severity::Error => {
                if self.errors < MAX_DIAGNOSTICS {
                    self.errors += 1;
                    self.list.push(d);
                } else if !self.errors_truncated {
                    self.errors_truncated = true;
                    self.list.push(Diagnostic {
                        message: format!("too many errors; stopped after {MAX_DIAGNOSTICS}"),
                        ..d
                    });
                }
            }
            Severity::Warning => {
                if self.warnings < MAX_DIAGNOSTICS {
                    self.warnings += 1;
                    self.list.push(d);
                } else {
                    self.dropped_warnings += 1;
                }
            }
        }
    }

    pub fn error(&mut self, span: &Span, message: impl Into<String>) {
        self.push(Diagnostic::error(span, message));
    }

    pub fn warning(&mut self, span: &Span, message: impl Into<String>) {
        self.push(Diagnostic::warning(span, message));
    }

    /// True once the error cap was hit: callers may stop early.
    pub fn full(&self) -> bool {
        self.errors_truncated
    }

    pub fn has_errors(&self) -> bool {
        self.errors > 0
    }

    pub fn into_vec(mut self) -> Vec<Diagnostic> {
        if self.dropped_warnings > 0 {
            self.list.push(Diagnostic {
                file: self.last_file.unwrap_or_default(),
                line: 0,
                severity: Severity::Warning,
                message: format!("{} more warnings not shown", self.dropped_warnings),
            });
        }
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_formats() {
        let file: Arc<str> = Arc::from("multipath.conf");
        let d = Diagnostic::error(&Span::new(&file, 12), "bad");
        assert_eq!(d.to_string(), "multipath.conf:12: error: bad");
        let w = Diagnostic::warning(&Span::new(&file, 3), "meh");
        assert_eq!(w.to_string(), "multipath.conf:3: warning: meh");
        let whole = Diagnostic::error(&Span::new(&file, 0), "cannot read");
        assert_eq!(whole.to_string(), "multipath.conf: error: cannot read");
    }

    #[test]
    fn warning_cap_does_not_fail() {
        let file: Arc<str> = Arc::from("f");
        let mut d = Diags::new();
        for i in 0..(MAX_DIAGNOSTICS as u32 + 50) {
            d.warning(&Span::new(&file, i + 1), "x");
        }
        assert!(!d.full());
        assert!(!d.has_errors());
        let v = d.into_vec();
        assert_eq!(v.len(), MAX_DIAGNOSTICS + 1);
        assert_eq!(
            v.last().unwrap().to_string(),
            "f: warning: 50 more warnings not shown"
        );
    }

    #[test]
    fn error_cap_stops() {
        let file: Arc<str> = Arc::from("f");
        let mut d = Diags::new();
        for i in 0..(MAX_DIAGNOSTICS as u32 + 50) {
            d.error(&Span::new(&file, i + 1), "x");
        }
        assert!(d.full());
        let v = d.into_vec();
        assert_eq!(v.len(), MAX_DIAGNOSTICS + 1);
        assert!(v.last().unwrap().message.contains("too many errors"));
    }
}
