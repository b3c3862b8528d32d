#!/usr/bin/env bash
# The Debian/Ubuntu packages the desktop app needs to open a window (Qt's X11 plug-in loads them; the
# source install and the bundle need them alike), plus Xvfb, the X server of the real-X start test.
#
#   installer/system_packages.sh            install what is missing (as root, with apt-get, no prompt);
#                                           otherwise print the line that installs it
#   installer/system_packages.sh --list     print the package names
#
# `make setup` and `make test` run it. Quick when everything is there (one dpkg-query); never fails the
# build by itself: the start test says what to do when Xvfb is still missing.
set -uo pipefail

# Keep in step with launcher/platform_check.py (XCB_PACKAGES) and installer/README.md.
PACKAGES=(libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-randr0
          libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 libdbus-1-3 xvfb)

if [[ ${1:-} == --list ]]; then
    echo "${PACKAGES[*]}"
    exit 0
fi
if [[ $(uname -s) != Linux ]] || ! command -v dpkg-query >/dev/null 2>&1; then
    exit 0  # not Debian/Ubuntu: installer/README.md lists the Fedora names
fi

missing=()
installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null)
for package in "${PACKAGES[@]}"; do
    grep -Eq "^$package ii" <<<"$installed" || missing+=("$package")
done
(( ${#missing[@]} )) || exit 0

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing the desktop's system libraries and Xvfb: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be stale or absent on a fresh machine: update once and try again.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
        || echo "warning: apt-get could not install ${missing[*]}; the real-X start test will fail" >&2
else
    echo "The desktop app and its real-X start test need: sudo apt-get install ${missing[*]}" >&2
fi
exit 0
