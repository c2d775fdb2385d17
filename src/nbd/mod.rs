//! NBD: a pure protocol codec ([`proto`]) and a tokio server ([`server`]).
