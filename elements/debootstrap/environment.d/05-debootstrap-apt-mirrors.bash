# shellcheck shell=bash
# Helpers for operating-system elements that find package mirrors in the build host's own apt
# sources, so that no mirror host name is built into kiln. Sourced (not executed) before every
# phase, ahead of the operating-system element's environment file; defines functions only.

# _kiln_apt_source_uris: print "main <uri>" or "security <uri>" for every enabled binary
# ("deb") source of this machine: deb822 *.sources files first, then one-line lists.
_kiln_apt_source_uris() {
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -r "$file" ] || continue
        awk '
            function flush(   n, m, i, sec, u, s) {
                if (uris != "" && (" " types " ") ~ /[ \t]deb[ \t]/ && enabled !~ /^(no|false|0)$/) {
                    m = split(suites, s, /[ \t]+/)
                    sec = (m > 0)
                    for (i = 1; i <= m; i++)
                        if (s[i] != "" && s[i] !~ /-security$/ && s[i] !~ /\/updates$/) sec = 0
                    n = split(uris, u, /[ \t]+/)
                    for (i = 1; i <= n; i++)
                        if (u[i] != "") print ((sec || u[i] ~ /security/) ? "security" : "main"), u[i]
                }
                uris = ""; suites = ""; types = ""; enabled = "yes"
            }
            BEGIN { enabled = "yes" }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[^ \t][^:]*:/ {
                key = tolower(substr($0, 1, index($0, ":") - 1))
                val = substr($0, index($0, ":") + 1)
                gsub(/^[ \t]+|[ \t]+$/, "", val)
                if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "types") types = val
                else if (key == "enabled") enabled = tolower(val)
            }
            END { flush() }
        ' "$file" || true
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$file" ] || continue
        awk '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if (i > NF) next
                uri = $i; suite = $(i + 1)
                sec = (uri ~ /security/ || suite ~ /-security$/ || suite ~ /\/updates$/)
                print (sec ? "security" : "main"), uri
            }
        ' "$file" || true
    done
    return 0
}

# _kiln_apt_pick KIND ERE: the first URI of KIND (main or security), without trailing
# slashes, that matches the extended regular expression ERE. Prints nothing if none does.
_kiln_apt_pick() {
    _kiln_apt_source_uris | awk -v kind="$1" -v re="$2" '
        $1 == kind && !found { u = $2; sub(/\/+$/, "", u); if (u ~ re) { print u; found = 1 } }'
}

# _kiln_host_os_id_is ID: true when /etc/os-release says ID=<ID>.
_kiln_host_os_id_is() {
    [ -r /etc/os-release ] || return 1
    awk -F= -v want="$1" '
        $1 == "ID" { v = $2; gsub(/["\047]/, "", v); if (v == want) found = 1 }
        END { exit !found }' /etc/os-release
}
