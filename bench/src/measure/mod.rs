//! Measurement primitives that know nothing of the peers: one run of a process and its
//! watchdog ([`run`]), summary statistics ([`stats`]), phase breakdowns ([`timeline`]), host
//! memory ([`hostmem`]) and the machine's facts ([`machine`]); and [`Part`], a measurement or
//! why it is missing.

pub(crate) mod hostmem;
pub(crate) mod machine;
pub(crate) mod run;
pub(crate) mod stats;
pub(crate) mod timeline;

use serde::Serialize;

/// An optional part of a report: measured, or why not (`{"unavailable": "…"}` in JSON).
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Part<T> {
    /// Measured.
    Done(T),
    /// Not measured.
    Missing {
        /// Why.
        unavailable: String,
    },
}

impl<T> Part<T> {
    /// `Ok` as measured, `Err` as the reason it is missing (the whole error chain).
    pub(crate) fn from_result(result: crate::error::Result<T>) -> Part<T> {
        match result {
            Ok(done) => Part::Done(done),
            Err(err) => Part::Missing {
                unavailable: crate::error::chain(&err),
            },
        }
    }

    /// The measurement, if there is one.
    pub(crate) fn done(&self) -> Option<&T> {
        match self {
            Part::Done(done) => Some(done),
            Part::Missing { .. } => None,
        }
    }
}
