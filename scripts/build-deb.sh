#!/usr/bin/env bash
# Builds the Debian package target/debian/umpath_<version>-1_<arch>.deb:
# the release binary, the man pages and shell completions generated from
# it (`umpath generate`, into target/assets), then `cargo deb` with the
# metadata in Cargo.toml. Needs cargo-deb (`cargo install cargo-deb`) and
# dpkg-dev (dpkg-shlibdeps, for the package's Depends). Prints the path of
# the package on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null; then
  echo "==> installing cargo-deb (cargo install cargo-deb)" >&2
  cargo install --locked cargo-deb >&2
fi

echo "==> cargo build --release" >&2
cargo build --release --locked >&2

assets=target/assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
target/release/umpath generate man "$assets/man" >/dev/null
target/release/umpath generate completions bash >"$assets/completions/umpath.bash"
target/release/umpath generate completions zsh >"$assets/completions/_umpath"
target/release/umpath generate completions fish >"$assets/completions/umpath.fish"

echo "==> cargo deb" >&2
# The release profile keeps line tables (debug = 1) for backtraces in
# development; the package's binary is stripped.
cargo deb --no-build --locked --strip
