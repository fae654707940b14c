#!/bin/sh
# install.sh: installs shellper, minitower and leasectl from this release
# tarball (run it from the unpacked directory, or anywhere by path).
#
#   ./install.sh [--prefix DIR] [--force]     install (default prefix: ~/.local)
#   ./install.sh [--prefix DIR] --uninstall   remove what an install put there
#
# It installs:
#   DIR/bin/{shellper,minitower,leasectl}
#   DIR/share/man/man1/*.1                   (man shellper, man leasectl-codev, ...)
#   DIR/share/bash-completion/completions/, DIR/share/zsh/site-functions/,
#   DIR/share/fish/vendor_completions.d/    (shell completions)
#   DIR/share/shellper/systemd/              (user units, ExecStart pointing at DIR/bin)
#   DIR/share/shellper/codev/shellper-main.js  (the codev shim; `leasectl codev install`
#                                            carries its own copy)
#   DIR/share/shellper/install.sh            (this script: DIR/share/shellper/install.sh
#                                            --uninstall works without the tarball)
# and records every file and directory it created in
# DIR/share/shellper/install-manifest, which --uninstall reads: it removes
# exactly those, so the prefix is left as it was. A file already there that
# an earlier install did not put there is left alone (install stops) unless
# --force.
set -eu

prog=install.sh
prefix="${HOME:-}/.local"
# Run as DIR/share/shellper/install.sh (the copy an install leaves), the
# prefix is that DIR.
here=$(cd "$(dirname "$0")" && pwd)
if [ -f "$here/install-manifest" ]; then
  prefix=$(cd "$here/../.." && pwd)
fi
uninstall=0
force=0
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { echo "$prog: --prefix needs a directory" >&2; exit 2; }; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --uninstall) uninstall=1; shift ;;
    --force) force=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "$prog: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$prefix" ] || { echo "$prog: empty --prefix (and no \$HOME)" >&2; exit 2; }
case "$prefix" in
  /*) ;;
  *) prefix="$(pwd)/$prefix" ;;
esac
prefix=${prefix%/}
manifest="$prefix/share/shellper/install-manifest"

# --- uninstall -----------------------------------------------------------
if [ "$uninstall" = 1 ]; then
  if [ ! -f "$manifest" ]; then
    echo "$prog: nothing to uninstall in $prefix (no $manifest)" >&2
    exit 1
  fi
  n=0
  # Files first, then the directories an install created, deepest first
  # (a directory that holds anything else stays).
  while IFS= read -r line; do
    case "$line" in
      f\ *) f="$prefix/${line#f }"
            if [ -e "$f" ] || [ -L "$f" ]; then rm -f "$f"; n=$((n + 1)); echo "removed $f"; fi ;;
    esac
  done < "$manifest"
  dirs=""
  [ -f "$manifest.dirs" ] && dirs=$(sed -n 's/^d //p' "$manifest.dirs" | LC_ALL=C sort -r)
  rm -f "$manifest" "$manifest.dirs"
  printf '%s\n' "$dirs" | while IFS= read -r d; do
    [ -n "$d" ] || continue
    if rmdir "$prefix/$d" 2>/dev/null; then echo "removed $prefix/$d/"; fi
  done
  echo "uninstalled shellper from $prefix ($n files)"
  exit 0
fi

# --- install -------------------------------------------------------------
src=$here
for b in shellper minitower leasectl; do
  [ -x "$src/bin/$b" ] || { echo "$prog: $src/bin/$b missing: run the install.sh of an unpacked release tarball" >&2; exit 1; }
done

# What an earlier install put here (its files may be replaced).
previous=""
[ -f "$manifest" ] && previous=$(sed -n 's/^f //p' "$manifest")
ours() { printf '%s\n' "$previous" | grep -qxF "$1"; }

# The files to install, relative to the tarball root and to the prefix.
list=$(cd "$src" && find bin share -type f | LC_ALL=C sort)

# Refuse before touching anything.
for rel in $list; do
  if [ -e "$prefix/$rel" ] && ! ours "$rel" && [ "$force" = 0 ]; then
    echo "$prog: $prefix/$rel exists and was not installed by this installer; remove it, or pass --force to replace it" >&2
    exit 1
  fi
done

# Directories this install creates (and those an earlier one created) are
# recorded, so that --uninstall removes them and nothing else.
dirs_new=$(mktemp)
files_new=$(mktemp)
trap 'rm -f "$dirs_new" "$files_new"' EXIT
[ -f "$manifest.dirs" ] && cat "$manifest.dirs" > "$dirs_new"
mkdir_tracked() {
  [ -d "$prefix/$1" ] && return 0
  parent=$(dirname "$1")
  [ "$parent" = . ] || mkdir_tracked "$parent"
  mkdir "$prefix/$1"
  echo "d $1" >> "$dirs_new"
}

[ -d "$prefix" ] || { mkdir -p "$prefix"; echo "created $prefix"; }
mkdir_tracked share/shellper
for rel in $list; do
  mkdir_tracked "$(dirname "$rel")"
  mode=0644
  case "$rel" in bin/*|share/shellper/install.sh) mode=0755 ;; esac
  dest="$prefix/$rel"
  tmp="$dest.install-tmp.$$"
  case "$rel" in
    share/shellper/systemd/*)
      # The units start the binaries from where this install put them.
      sed "s#%h/\.cargo/bin/#$prefix/bin/#g" "$src/$rel" > "$tmp" ;;
    *) cp "$src/$rel" "$tmp" ;;
  esac
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
  echo "f $rel" >> "$files_new"
done
# Files of an earlier install that this one no longer has.
for rel in $previous; do
  if ! grep -qxF "f $rel" "$files_new"; then
    rm -f "$prefix/$rel" && echo "removed $prefix/$rel (not in this release)"
  fi
done
sort -u "$dirs_new" > "$manifest.dirs"
cp "$files_new" "$manifest"

count() { printf '%s\n' "$list" | grep -c "^$1" || true; }
echo "installed shellper $("$prefix/bin/shellper" --version 2>/dev/null | sed 's/^shellper //') into $prefix:"
echo "  $prefix/bin/: shellper, minitower, leasectl"
echo "  $prefix/share/man/man1/: $(count share/man/man1/) man pages (man shellper, man minitower, man leasectl)"
echo "  completions: bash ($prefix/share/bash-completion/completions), zsh ($prefix/share/zsh/site-functions), fish ($prefix/share/fish/vendor_completions.d)"
echo "  $prefix/share/shellper/systemd/: user units for minitower and leasectl metrics"
echo "  manifest: $manifest (to uninstall: $prefix/share/shellper/install.sh --uninstall)"
case ":${PATH:-}:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on your PATH: add it, e.g. export PATH=\"$prefix/bin:\$PATH\"" ;;
esac
echo "next:"
echo "  leasectl demo                # leases lapse, trees die, sessions get re-adopted (< 1 min)"
echo "  leasectl codev install       # codev's sessions on the native shellper (Node >= 22.15)"
echo "  systemd: cp $prefix/share/shellper/systemd/minitower.service ~/.config/systemd/user/ && systemctl --user enable --now minitower"
