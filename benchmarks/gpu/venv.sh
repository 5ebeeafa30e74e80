# shellcheck shell=bash
# Sourced by unpack_install.sh and train.sh: a venv with pip, from the stashed wheels.
#
#   make_venv VENV PYTHON WHEELS [venv flags...]   make VENV from PYTHON (if it is not
#                                                  there) with pip run from its own wheel
#   pip_install ARGS...                            pip install from WHEELS only, into
#                                                  the venv make_venv made last
# Both call die (the sourcing script's) on failure.

make_venv() {
    local venv=$1 python=$2
    wheels=$3
    shift 3
    [ -x "$venv/bin/python" ] || "$python" -m venv --without-pip "$@" "$venv" ||
        die "cannot make a venv"
    venv_python=$venv/bin/python
    if ! "$venv_python" -m pip --version >/dev/null 2>&1; then # pip runs from its own wheel
        local pip_wheel
        pip_wheel=$(find "$wheels" -maxdepth 1 -name 'pip-*.whl' | head -n 1)
        [ -n "$pip_wheel" ] || die "no pip wheel among $wheels"
        "$venv_python" "$pip_wheel/pip" install -q --no-index --find-links "$wheels" pip ||
            die "cannot install pip into $venv"
    fi
}

pip_install() {
    "$venv_python" -m pip install -q --disable-pip-version-check --no-index \
        --find-links "$wheels" "$@"
}
