//! `path_latency`: `prio_args "io_num=N base_num=M"`.
//!
//! The edge times `io_num` direct reads of one block; the priority is
//! how many powers of `base_num` the geometric mean of the latencies (in
//! whole microseconds) lies below 100 s: `log_base(1e8) -
//! log_base(mean)`, truncated, 0 at or above 100 s. A sample under a
//! microsecond adds nothing to the sum but counts in the mean (as in
//! multipath-tools, which skips log(0)).
//!
//! Ranges: io_num 20 to 200, base_num 1.1 to 10. With no arguments the
//! defaults apply (io_num 100, base_num 10^(1/4): four steps per factor
//! of ten). multipath-tools also falls back to the defaults, for both,
//! when either argument is missing or bad; umpath refuses such arguments,
//! naming the one at fault.

use std::fmt;
use std::time::Duration;

use super::PrioConfigError;
use crate::units::Prio;

const NAME: &str = "path_latency";

/// Reads per measurement: range and default.
pub const IO_NUM_MIN: u32 = 20;
pub const IO_NUM_MAX: u32 = 200;
pub const IO_NUM_DEFAULT: u32 = 100;
/// Logarithm base: range and default (10^(1/4)).
pub const BASE_NUM_MIN: f64 = 1.1;
pub const BASE_NUM_MAX: f64 = 10.0;
pub const BASE_NUM_DEFAULT: f64 = 1.778_279_410_04;

/// Mean latencies at or above this (microseconds) score 0.
const MAX_AVG_LATENCY_US: f64 = 100_000_000.0;

/// Parsed `path_latency` arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathLatency {
    /// Timed reads per measurement.
    pub io_num: u32,
    /// The logarithm base of the scale.
    pub base_num: f64,
}

impl Default for PathLatency {
    fn default() -> Self {
        PathLatency {
            io_num: IO_NUM_DEFAULT,
            base_num: BASE_NUM_DEFAULT,
        }
    }
}

impl PathLatency {
    /// Parses `prio_args`: both `io_num=` and `base_num=` (any order), or
    /// nothing for the defaults.
    pub fn parse(args: &str) -> Result<PathLatency, PrioConfigError> {
        let mut io_num = None;
        let mut base_num = None;
        let mut any = false;
        for w in args.split_whitespace() {
            any = true;
            if let Some(v) = w.strip_prefix("io_num=") {
                if io_num.is_some() {
                    return Err(PrioConfigError::bad(NAME, w, "io_num given twice"));
                }
                let n: u32 = v.parse().map_err(|_| {
                    PrioConfigError::bad(NAME, w, format!("io_num '{v}' is not a whole number"))
                })?;
                if !(IO_NUM_MIN..=IO_NUM_MAX).contains(&n) {
                    return Err(PrioConfigError::bad(
                        NAME,
                        w,
                        format!("io_num {n} is out of range ({IO_NUM_MIN} to {IO_NUM_MAX})"),
                    ));
                }
                io_num = Some(n);
            } else if let Some(v) = w.strip_prefix("base_num=") {
                if base_num.is_some() {
                    return Err(PrioConfigError::bad(NAME, w, "base_num given twice"));
                }
                let b: f64 = v.parse().map_err(|_| {
                    PrioConfigError::bad(NAME, w, format!("base_num '{v}' is not a number"))
                })?;
                if !(BASE_NUM_MIN..=BASE_NUM_MAX).contains(&b) {
                    return Err(PrioConfigError::bad(
                        NAME,
                        w,
                        format!("base_num {v} is out of range ({BASE_NUM_MIN} to {BASE_NUM_MAX})"),
                    ));
                }
                base_num = Some(b);
            } else {
                return Err(PrioConfigError::bad(
                    NAME,
                    w,
                    format!("unknown argument '{w}' (expected io_num=N base_num=M)"),
                ));
            }
        }
        match (io_num, base_num) {
            (Some(io_num), Some(base_num)) => Ok(PathLatency { io_num, base_num }),
            _ if !any => Ok(PathLatency::default()),
            (None, _) => Err(PrioConfigError::bad(
                NAME,
                "",
                "io_num=N is missing (both io_num and base_num are needed)",
            )),
            (_, None) => Err(PrioConfigError::bad(
                NAME,
                "",
                "base_num=M is missing (both io_num and base_num are needed)",
            )),
        }
    }

    /// The priority from the latencies of one measurement (non-empty;
    /// normally `io_num` of them).
    pub fn score(&self, samples: &[Duration]) -> Prio {
        let lg_base = self.base_num.ln();
        let lg_max = MAX_AVG_LATENCY_US.ln() / lg_base;
        let sum: f64 = samples
            .iter()
            .map(|d| d.as_micros())
            .filter(|&us| us > 0)
            .map(|us| (us as f64).ln() / lg_base)
            .sum();
        let n = samples.len().max(1) as f64;
        let avg = sum / n;
        let steps = if avg >= lg_max {
            0.0
        } else if avg <= 0.0 {
            lg_max
        } else {
            lg_max - avg
        };
        // Truncation toward zero, as C's conversion; steps is in 0..=175.
        Prio(steps as i32)
    }
}

impl fmt::Display for PathLatency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "io_num={} base_num={}", self.io_num, self.base_num)
    }
}
