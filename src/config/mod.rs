//! multipath.conf: parsing, the built-in hardware table and property
//! selection (with the origin of every value). Pure: reading the file is
//! the only IO, and it happens in [`Config::load`].
