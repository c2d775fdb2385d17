//! Transports: how a path reaches its LUN.
