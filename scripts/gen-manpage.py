#!/usr/bin/env python3
"""Writes spiffe-tunnel(8) from the program's own --help output: the top level and every
subcommand, so the page lists exactly the flags the binary takes. Called by the build
(cmake/packaging.cmake): gen-manpage.py BINARY VERSION OUT.8.gz

CLI11 prints "Usage:", "Options:" and "Subcommands:" blocks; an option line starts with two
spaces and a dash, its description follows after a gap of two or more spaces or on indented
continuation lines. Everything else in the help is prose."""
import gzip
import re
import subprocess
import sys

SUBCOMMAND_LINE = re.compile(r"^  ([a-z][a-z-]*)\s{2,}(.*)$")
OPTION_LINE = re.compile(r"^  (-\S.*?)(?:\s{2,}(.*))?$")
# CLI11 starts descriptions in this column; a spec that nearly fills it leaves one space only.
DESCRIPTION_COLUMN = 30
CONTINUATION = re.compile(r"^\s{6,}(\S.*)$")


def roff(text: str) -> str:
    """Escapes text for a roff body line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def run_help(binary: str, *args: str) -> list[str]:
    out = subprocess.run([binary, *args, "--help"], check=True, capture_output=True, text=True)
    return out.stdout.splitlines()


def parse(lines: list[str]) -> dict:
    """Splits one --help output into prose, usage, options [(spec, text)] and subcommands."""
    parsed = {"prose": [], "usage": "", "options": [], "subcommands": []}
    block = "prose"
    for line in lines:
        if line.startswith("Usage:"):
            parsed["usage"] = line[len("Usage:"):].strip()
            block = "usage"
        elif line.rstrip() in ("Options:", "Subcommands:"):
            block = line.rstrip()[:-1].lower()
        elif block == "options" and (m := OPTION_LINE.match(line)):
            col = DESCRIPTION_COLUMN
            if len(line) > col and line[col - 1] == " " and line[col] != " ":
                parsed["options"].append([line[:col].strip(), line[col:].strip()])
            else:
                parsed["options"].append([m.group(1).strip(), m.group(2) or ""])
        elif block == "subcommands" and (m := SUBCOMMAND_LINE.match(line)):
            parsed["subcommands"].append([m.group(1), m.group(2)])
        elif block in ("options", "subcommands") and (m := CONTINUATION.match(line)):
            entries = parsed[block]
            if entries:
                entries[-1][1] = (entries[-1][1] + " " + m.group(1)).strip()
        elif block == "prose" and line.strip():
            parsed["prose"].append(line.strip())
    return parsed


def option_list(options: list) -> list[str]:
    out = []
    for spec, text in options:
        if spec.startswith("-h,--help"):
            continue
        out += [".TP", "\\fB" + roff(spec) + "\\fR", roff(text)]
    return out


FIXED_TAIL = r"""
.SH FILES
.TP
.I /etc/spiffe-tunnel/config.yaml
The configuration \fBspiffe\-tunnel.service\fR runs (\fBrun \-c\fR).
.TP
.I /lib/systemd/system/spiffe\-tunnel.service
The systemd unit: Type=notify, watchdog, reload, hardening.
.TP
.I /lib/systemd/system/spiffe\-tunnel.socket
An example of socket activation (\fBlisten: systemd:NAME\fR).
.SH SIGNALS
\fBSIGHUP\fR reloads the configuration file (\fBsystemctl reload spiffe\-tunnel\fR);
\fBSIGTERM\fR and \fBSIGINT\fR stop accepting and drain open sessions for
\fBdrain_timeout\fR.
.SH EXIT STATUS
0 after a clean stop; 1 when the configuration or environment does not allow a start;
\fBcheck\-config\fR and \fBreload\fR exit 2 on an invalid file; \fBwait\-ready\fR as listed above.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBsystemd.exec\fR(5), \fBspire\-agent\fR(1),
/usr/share/doc/spiffe\-tunnel/
"""


def page(binary: str, version: str) -> str:
    top = parse(run_help(binary))
    out = [
        '.TH SPIFFE\\-TUNNEL 8 "" "spiffe-tunnel %s" "System Administration"' % version,
        ".SH NAME",
        "spiffe\\-tunnel \\- SPIFFE\\-aware mutual TLS tunnel daemon",
        ".SH SYNOPSIS",
        "\\fBspiffe\\-tunnel\\fR [\\fIGLOBAL OPTIONS\\fR] \\fISUBCOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        "spiffe\\-tunnel links services across sites with mutual TLS and SPIFFE identities. A",
        "\\fBserver\\fR tunnel accepts mTLS and forwards plain TCP to a local target; a",
        "\\fBclient\\fR tunnel accepts plain TCP and forwards it over mTLS. One process runs",
        "many tunnels (\\fBrun\\fR with a YAML file, as the systemd unit does), each presenting",
        "its own SVID and verifying every peer against the bundle of the peer's own trust domain.",
        ".PP",
        "Subcommands:",
    ]
    for line in top["prose"][1:]:  # the first repeats NAME
        # "name: what it does" lines summarise the subcommands; the rest is a paragraph.
        if m := re.match(r"^([a-z][a-z-]*):\s+(.*)$", line):
            out += [".TP", "\\fB" + roff(m.group(1)) + "\\fR", roff(m.group(2))]
        else:
            out += [".PP", roff(line)]
    out += [".SH GLOBAL OPTIONS"] + option_list(top["options"])
    out += [".SH SUBCOMMANDS"]
    for name, _ in top["subcommands"]:
        sub = parse(run_help(binary, name))
        out += [".SS " + roff(name), roff(" ".join(sub["prose"])) + ".",
                ".PP", "\\fBUsage:\\fR " + roff(sub["usage"])]
        out += option_list(sub["options"])
    return "\n".join(out) + FIXED_TAIL


def main() -> int:
    binary, version, dest = sys.argv[1:4]
    text = page(binary, version).encode()
    # mtime=0 and no file name in the header: the same page gives the same bytes.
    with open(dest, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0,
                                              compresslevel=9) as gz:
        gz.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
