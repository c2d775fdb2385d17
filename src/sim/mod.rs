//! `umpath simulate`: failover simulation. [`scenario`] and [`report`] are
//! pure; [`run`] runs the real engine on scratch images with a verifying
//! workload and a timeline of faults.

pub mod report;
pub mod run;
pub mod scenario;
