#!/usr/bin/env bash
# Install (or remove) the Dopamine desktop app for the current user, from the unpacked tar.gz.
#
#   ./install.sh              copy to ~/.local/opt/dopamine, put `dopamine` on ~/.local/bin,
#                             add the menu entry and icon
#   ./install.sh --uninstall  remove all of that again (data and settings in ~/.local/share/Dopamine and
#                             ~/.config/Dopamine stay)
#
# PREFIX=/opt/dopamine BIN_DIR=/usr/local/bin DATA_DIR=/usr/share sudo -E ./install.sh installs for all users.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-$HOME/.local/opt/dopamine}
BIN_DIR=${BIN_DIR:-$HOME/.local/bin}
DATA_DIR=${DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}}
DESKTOP_FILE=$DATA_DIR/applications/dopamine.desktop
ICON_FILE=$DATA_DIR/icons/hicolor/512x512/apps/dopamine.png
SVG_FILE=$DATA_DIR/icons/hicolor/scalable/apps/dopamine.svg

# Never delete a folder that is not an earlier installation (a mistyped PREFIX such as $HOME).
remove_old_install() {
    if [[ -e "$PREFIX" ]]; then
        if [[ ! -x "$PREFIX/dopamine" || ! -d "$PREFIX/_internal" ]]; then
            echo "install.sh: $PREFIX exists and is not a Dopamine installation; choose another PREFIX" >&2
            exit 1
        fi
        rm -rf "$PREFIX"
    fi
}

refresh_menus() {
    command -v update-desktop-database >/dev/null && update-desktop-database -q "$DATA_DIR/applications" || true
    command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$DATA_DIR/icons/hicolor" || true
}

if [[ ${1:-} == --uninstall ]]; then
    remove_old_install
    rm -f "$BIN_DIR/dopamine" "$DESKTOP_FILE" "$ICON_FILE" "$SVG_FILE"
    refresh_menus
    echo "Dopamine removed (your data and settings were kept)."
    exit 0
fi

if [[ ! -x "$HERE/Dopamine/dopamine" ]]; then
    echo "install.sh: run me from the unpacked archive (Dopamine/dopamine is missing)" >&2
    exit 1
fi
remove_old_install
mkdir -p "$(dirname "$PREFIX")" "$BIN_DIR" "$(dirname "$DESKTOP_FILE")" "$(dirname "$ICON_FILE")" "$(dirname "$SVG_FILE")"
cp -a "$HERE/Dopamine" "$PREFIX"
ln -sfn "$PREFIX/dopamine" "$BIN_DIR/dopamine"
install -m 0644 "$HERE/dopamine.png" "$ICON_FILE"
install -m 0644 "$HERE/dopamine.svg" "$SVG_FILE"
# The menu entry names the installed program by its full path: ~/.local/bin may not be on PATH.
sed -e "s|^Exec=.*|Exec=\"$PREFIX/dopamine\"|" -e "s|^TryExec=.*|TryExec=$PREFIX/dopamine|" \
    "$HERE/dopamine.desktop" >"$DESKTOP_FILE"
chmod 0644 "$DESKTOP_FILE"
refresh_menus
echo "Dopamine installed in $PREFIX; start it from the applications menu or run: $BIN_DIR/dopamine"
