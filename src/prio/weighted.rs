//! `weightedpath`: `prio_args "FIELD REGEX WEIGHT [REGEX WEIGHT]..."`.
//!
//! FIELD is `hbtl` (the path's "H:C:T:L"), `devname` ("sdb"), `serial`
//! or `wwn` ("host_wwnn:host_wwpn:target_wwnn:target_wwpn"). The first
//! regex (extended syntax, unanchored: it may match anywhere) that
//! matches the field gives the path its weight; a path no regex matches
//! gets 0. Arguments are separated by spaces or tabs, so a regex cannot
//! contain either.
//!
//! multipath-tools skips a regex that does not compile, reads a weight
//! that is not a number as 0 (or its leading digits), and ignores a
//! trailing regex without weight; umpath refuses all three, naming the
//! argument.

use std::fmt;

use regex::Regex;

use super::PrioConfigError;
use crate::units::Prio;

const NAME: &str = "weightedpath";

/// The path field the regexes are matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightedField {
    Hbtl,
    Devname,
    Serial,
    Wwn,
}

impl WeightedField {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightedField::Hbtl => "hbtl",
            WeightedField::Devname => "devname",
            WeightedField::Serial => "serial",
            WeightedField::Wwn => "wwn",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "hbtl" => WeightedField::Hbtl,
            "devname" => WeightedField::Devname,
            "serial" => WeightedField::Serial,
            "wwn" => WeightedField::Wwn,
            _ => return None,
        })
    }
}

/// Parsed `weightedpath` arguments.
#[derive(Debug, Clone)]
pub struct WeightedPath {
    pub field: WeightedField,
    /// (regex, weight) in the order written.
    pub rules: Vec<(Regex, i32)>,
}

impl PartialEq for WeightedPath {
    fn eq(&self, other: &Self) -> bool {
        self.field == other.field
            && self.rules.len() == other.rules.len()
            && self
                .rules
                .iter()
                .zip(&other.rules)
                .all(|((ra, wa), (rb, wb))| ra.as_str() == rb.as_str() && wa == wb)
    }
}

impl WeightedPath {
    /// Parses `prio_args`.
    pub fn parse(args: &str) -> Result<WeightedPath, PrioConfigError> {
        let mut words = args.split_whitespace();
        let Some(first) = words.next() else {
            return Err(PrioConfigError::bad(
                NAME,
                "",
                "missing arguments: expected hbtl, devname, serial or wwn, then REGEX WEIGHT pairs",
            ));
        };
        let field = WeightedField::parse(first).ok_or_else(|| {
            PrioConfigError::bad(
                NAME,
                first,
                format!("'{first}' is not hbtl, devname, serial or wwn"),
            )
        })?;
        let mut rules = Vec::new();
        while let Some(re) = words.next() {
            let Some(weight) = words.next() else {
                return Err(PrioConfigError::bad(
                    NAME,
                    re,
                    format!("regex '{re}' has no weight after it"),
                ));
            };
            let regex = crate::bounded_regex::compile(re).map_err(|e| {
                PrioConfigError::bad(NAME, re, format!("invalid regular expression '{re}': {e}"))
            })?;
            let weight: i32 = weight.parse().map_err(|_| {
                PrioConfigError::bad(
                    NAME,
                    weight,
                    format!("weight '{weight}' of regex '{re}' is not an integer"),
                )
            })?;
            rules.push((regex, weight));
        }
        Ok(WeightedPath { field, rules })
    }

    /// The weight of the first rule whose regex matches `value`, else 0.
    pub fn score(&self, value: &str) -> Prio {
        Prio(
            self.rules
                .iter()
                .find(|(re, _)| re.is_match(value))
                .map_or(0, |(_, w)| *w),
        )
    }
}

impl fmt::Display for WeightedPath {
    /// The arguments, single spaced.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field.as_str())?;
        for (re, w) in &self.rules {
            write!(f, " {} {w}", re.as_str())?;
        }
        Ok(())
    }
}
