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

# The bundle carries Qt's X11 utility libraries; libxcb itself, GL/EGL and a few more come from the system.
# Ask the dynamic linker what Qt's X11 plug-in cannot find (the bundle's own folder counted), and say how
# to install it. The app is installed either way: it says the same when started without them.
check_system_libraries() {
    local plugin="$HERE/Dopamine/_internal/PySide6/Qt/plugins/platforms/libqxcb.so" missing name
    [[ -f $plugin ]] && command -v ldd >/dev/null || return 0
    missing=$(LD_LIBRARY_PATH="$HERE/Dopamine/_internal${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$plugin" 2>/dev/null \
              | awk '/=> not found/ {print $1}' | sort -u)
    [[ -z $missing ]] && return 0
    local -A debian=([libxcb.so.1]=libxcb1 [libGL.so.1]=libgl1 [libGLX.so.0]=libglx0 [libGLdispatch.so.0]=libglvnd0
        [libEGL.so.1]=libegl1 [libOpenGL.so.0]=libopengl0 [libX11.so.6]=libx11-6 [libX11-xcb.so.1]=libx11-xcb1
        [libxkbcommon.so.0]=libxkbcommon0 [libxkbcommon-x11.so.0]=libxkbcommon-x11-0 [libfontconfig.so.1]=libfontconfig1
        [libfreetype.so.6]=libfreetype6 [libdbus-1.so.3]=libdbus-1-3 [libglib-2.0.so.0]=libglib2.0-0
        [libgthread-2.0.so.0]=libglib2.0-0 [libxcb-cursor.so.0]=libxcb-cursor0 [libxcb-icccm.so.4]=libxcb-icccm4
        [libxcb-keysyms.so.1]=libxcb-keysyms1 [libxcb-image.so.0]=libxcb-image0 [libxcb-render-util.so.0]=libxcb-render-util0)
    local -A fedora=([libxcb.so.1]=libxcb [libGL.so.1]=libglvnd-glx [libGLX.so.0]=libglvnd-glx [libGLdispatch.so.0]=libglvnd
        [libEGL.so.1]=libglvnd-egl [libOpenGL.so.0]=libglvnd-opengl [libX11.so.6]=libX11 [libX11-xcb.so.1]=libX11-xcb
        [libxkbcommon.so.0]=libxkbcommon [libxkbcommon-x11.so.0]=libxkbcommon-x11 [libfontconfig.so.1]=fontconfig
        [libfreetype.so.6]=freetype [libdbus-1.so.3]=dbus-libs [libglib-2.0.so.0]=glib2 [libgthread-2.0.so.0]=glib2
        [libxcb-cursor.so.0]=xcb-util-cursor [libxcb-icccm.so.4]=xcb-util-wm [libxcb-keysyms.so.1]=xcb-util-keysyms
        [libxcb-image.so.0]=xcb-util-image [libxcb-render-util.so.0]=xcb-util-renderutil)
    local apt=() dnf=() other=()
    for name in $missing; do
        if [[ -n ${debian[$name]:-} ]]; then apt+=("${debian[$name]}"); dnf+=("${fedora[$name]}"); else other+=("$name"); fi
    done
    echo "warning: Dopamine's window needs system libraries this computer lacks: $(echo $missing)" >&2
    if (( ${#apt[@]} )); then
        echo "  Debian/Ubuntu:  sudo apt-get install $(printf '%s\n' "${apt[@]}" | sort -u | xargs)" >&2
        echo "  Fedora:         sudo dnf install $(printf '%s\n' "${dnf[@]}" | sort -u | xargs)" >&2
    fi
    (( ${#other[@]} )) && echo "  and the package that provides ${other[*]} (ask your IT department)" >&2
    echo "  (the command line works without them)" >&2
}
check_system_libraries
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
