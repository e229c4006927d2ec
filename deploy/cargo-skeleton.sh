#!/bin/sh
# Parley — used by the Dockerfile's dependency-cache stage. Not needed outside Docker.
#
#   sh deploy/cargo-skeleton.sh SRC DEST
#
# Writes to DEST the workspace's skeleton: the root Cargo.toml and Cargo.lock, every crate's
# Cargo.toml, and an empty stub for each Rust target file the crates have (src/lib.rs, src/main.rs,
# src/bin/*.rs, build.rs, and any `path = "….rs"` a manifest names). `cargo build --locked` on the
# skeleton compiles every dependency and nothing of ours, so that Docker layer is reused until a
# manifest or the lock file changes. Crates are found by their Cargo.toml, so a crate added to the
# workspace needs no change here. Stub contents are fixed, so the skeleton is byte-identical
# whenever the manifests are (Docker's COPY cache compares contents, not times).
set -eu

src="$1"
dest="$2"

if [ ! -f "$src/Cargo.toml" ] || [ ! -f "$src/Cargo.lock" ]; then
  echo "cargo-skeleton: $src has no Cargo.toml and Cargo.lock" >&2
  exit 1
fi
mkdir -p "$dest"
cp "$src/Cargo.toml" "$src/Cargo.lock" "$dest/"
for f in rust-toolchain.toml rust-toolchain .cargo/config.toml; do
  if [ -f "$src/$f" ]; then
    mkdir -p "$(dirname "$dest/$f")"
    cp "$src/$f" "$dest/$f"
  fi
done

# stub FILE: an empty library root for lib.rs, else an empty `main`.
stub() {
  mkdir -p "$(dirname "$1")"
  case "$1" in
    */lib.rs) : >"$1" ;;
    *) echo 'fn main() {}' >"$1" ;;
  esac
}

cd "$src"
find . \( -name target -o -name .git -o -name .parley -o -name node_modules \) -prune \
  -o -name Cargo.toml -type f -print | sort | while IFS= read -r manifest; do
  dir="$(dirname "$manifest")"
  [ "$dir" = "." ] && continue
  mkdir -p "$dest/$dir"
  cp "$manifest" "$dest/$dir/Cargo.toml"
  for f in "$dir/src/lib.rs" "$dir/src/main.rs" "$dir/build.rs" "$dir"/src/bin/*.rs; do
    if [ -f "$f" ]; then stub "$dest/$f"; fi
  done
  # Targets declared with an explicit path (`[[bin]] path = "src/main.rs"`, `[lib] path = …`).
  sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest" |
    while IFS= read -r target; do
      if [ -f "$dir/$target" ] && [ ! -f "$dest/$dir/$target" ]; then stub "$dest/$dir/$target"; fi
    done
done
