package main

// TLS 1.3 session resumption with Go's crypto/tls, an implementation nobody in this project
// wrote. Identities come from PEM files (see fileIdentity in h2_connect.go).
//
//	spiffe-peer resume-dial --cert C --key K --bundle td=path... --server-id ID --addr host:port
//	    [--count 2] [--message TEXT]
//	    Connects --count times one after the other with one tls.ClientSessionCache; each time it
//	    sends TEXT, half-closes, reads until EOF (so the server's NewSessionTicket is read) and
//	    prints "conn <i> resumed=<true|false> version=<v> peer=<id> reply=<quoted reply>".
//	    A connection that fails prints "conn <i> error=<quoted error>".
//
//	spiffe-peer resume-serve --cert C --key K --bundle td=path... --allow-id ID [--listen addr]
//	    Echo server with session tickets on (Go's default): prints "listening <addr>", then for
//	    each connection "accepted <peer-id> resumed=<true|false> version=<v>" and, at its end,
//	    "closed <peer-id> bytes=<n>"; "rejected <remote>: <err>" for a failed handshake.

import (
	"crypto/tls"
	"flag"
	"io"
	"net"
	"strings"
	"time"
)

func cmdResumeDial(args []string) int {
	fs := flag.NewFlagSet("resume-dial", flag.ExitOnError)
	var id fileIdentity
	id.register(fs)
	serverID := fs.String("server-id", "", "expected SPIFFE ID of the server")
	addr := fs.String("addr", "", "server address host:port")
	count := fs.Int("count", 2, "connections, one after the other")
	message := fs.String("message", "resume me", "bytes to send on each connection")
	ioTimeout := fs.Duration("io-timeout", 15*time.Second, "deadline for each connection")
	_ = fs.Parse(args)

	cfg := id.clientConfig(*serverID)
	cfg.MinVersion = tls.VersionTLS13
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	failed := false
	for i := 1; i <= *count; i++ {
		if !resumeOnce(cfg, *addr, *message, *ioTimeout, i) {
			failed = true
		}
	}
	if failed {
		return exitFail
	}
	return exitOK
}

// resumeOnce makes connection i, reports whether it resumed and what came back.
func resumeOnce(cfg *tls.Config, addr, message string, timeout time.Duration, i int) bool {
	d := &net.Dialer{Timeout: timeout}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		emit("conn %d error=%q", i, err.Error())
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	state := conn.ConnectionState()
	if _, err := io.WriteString(conn, message); err != nil {
		emit("conn %d error=%q", i, peerAlert(conn, err).Error())
		return false
	}
	if err := conn.CloseWrite(); err != nil {
		emit("conn %d error=%q", i, peerAlert(conn, err).Error())
		return false
	}
	reply, err := io.ReadAll(conn) // reads the NewSessionTicket that follows the handshake too
	if err != nil {
		emit("conn %d error=%q", i, err.Error())
		return false
	}
	emit("conn %d resumed=%t version=%s peer=%s reply=%q", i, state.DidResume,
		versionName(state.Version), peerID(state), reply)
	return true
}

// versionName is crypto/tls' name of a protocol version without blanks: "TLS1.3".
func versionName(v uint16) string { return strings.ReplaceAll(tls.VersionName(v), " ", "") }

func cmdResumeServe(args []string) int {
	ln := fileServer("resume-serve", args, func(cfg *tls.Config) {
		cfg.MinVersion = tls.VersionTLS13
		cfg.SessionTicketsDisabled = false // Go issues tickets and resumes by default; say so
	})
	ctx, cancel := signalContext()
	defer cancel()
	serveAll(ctx, cancel, ln, 0, func(conn net.Conn) { serveConn(conn.(*tls.Conn), true) })
	return exitOK
}
