// spiffe-peer: an independent go-spiffe mTLS peer for spiffe-tunnel's integration tests.
//
// It takes its X509-SVIDs and trust bundles from a SPIFFE Workload API (a real SPIRE agent)
// through workloadapi.X509Source and authenticates peers with go-spiffe's tlsconfig, so it is a
// reference implementation to test the tunnel daemon against.
//
//	spiffe-peer serve --socket unix:///path/agent.sock --listen 127.0.0.1:0 \
//	        (--allow-id spiffe://td/x ... | --allow-td td | --allow-any) [--svid-hint H] [--max-conns N]
//	    Echo server. Prints "svid <id>" and then "listening <addr>" on stdout once ready; for every
//	    connection "accepted <peer-id>" and "closed <peer-id> bytes=<n>", or "rejected <remote>: <err>".
//
//	spiffe-peer dial --socket ... --addr HOST:PORT (--expect-id ID ... | --expect-td TD | --expect-any) \
//	        --message TEXT [--svid-hint H]
//	    Connects, sends TEXT, half-closes (CloseWrite) and copies everything the server sends back
//	    to stdout. Exit 0 on success; non-zero with the error on stderr on any failure.
//
//	spiffe-peer svids --socket ... [--wait-for-id ID] [--timeout 30s]
//	    Prints the X509 context (SVID IDs, hints, serials, expiry, bundle trust domains) as JSON.
//
//	spiffe-peer proxy-backend --listen 127.0.0.1:0 [--max-conns N]
//	    Plain-TCP backend that decodes a PROXY protocol header with go-proxyproto and echoes
//	    (see proxy_backend.go).
//
//	spiffe-peer h2-connect / h2-connect-server --cert C --key K --bundle td=path ...
//	    HTTP/2 CONNECT streams over mTLS (HBONE) with golang.org/x/net/http2, identities from PEM
//	    files (see h2_connect.go).
//
//	spiffe-peer resume-dial / resume-serve --cert C --key K --bundle td=path ...
//	    TLS 1.3 session resumption with crypto/tls (a ClientSessionCache; session tickets),
//	    identities from PEM files (see resume.go).
//
// Exit codes: 0 ok, 1 TLS/handshake/authorization/IO failure, 2 usage error,
// 3 no SVID from the Workload API within --timeout.
// The socket defaults to $SPIFFE_ENDPOINT_SOCKET; a bare absolute path is accepted too.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

const (
	exitOK      = 0
	exitFail    = 1
	exitUsage   = 2
	exitNoSVIDs = 3
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// stdout is shared by goroutines; every line is written atomically and flushed immediately
// (os.Stdout is unbuffered), so a parent process reading line by line sees events at once.
var outMu sync.Mutex

func emit(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "spiffe-peer: "+format+"\n", args...)
}

func die(code int, format string, args ...any) {
	logf(format, args...)
	os.Exit(code)
}

type common struct {
	socket  string
	hint    string
	timeout time.Duration
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.socket, "socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"),
		"Workload API address (unix:///path or /path; default $SPIFFE_ENDPOINT_SOCKET)")
	fs.StringVar(&c.hint, "svid-hint", "", "present the SVID with this hint instead of the first one")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "how long to wait for the first SVID")
}

func (c *common) addr() string {
	if strings.HasPrefix(c.socket, "/") {
		return "unix://" + c.socket
	}
	return c.socket
}

// source connects to the Workload API and waits (up to --timeout) for the first X509 context.
func (c *common) source(ctx context.Context) *workloadapi.X509Source {
	if c.socket == "" {
		die(exitUsage, "--socket (or SPIFFE_ENDPOINT_SOCKET) is required")
	}
	opts := []workloadapi.X509SourceOption{
		workloadapi.WithClientOptions(workloadapi.WithAddr(c.addr())),
	}
	if c.hint != "" {
		hint := c.hint
		opts = append(opts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.Hint == hint {
					return s
				}
			}
			logf("no SVID with hint %q among %d SVIDs; handshakes will fail", hint, len(svids))
			return nil
		}))
	}
	wctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	src, err := workloadapi.NewX509Source(wctx, opts...)
	if err != nil {
		die(exitNoSVIDs, "no X509 context from %s: %v", c.socket, err)
	}
	return src
}

func authorizer(ids []string, td string, anyID bool) (tlsconfig.Authorizer, error) {
	n := 0
	if len(ids) > 0 {
		n++
	}
	if td != "" {
		n++
	}
	if anyID {
		n++
	}
	if n != 1 {
		return nil, errors.New("exactly one of the ID list, the trust domain or 'any' must be given")
	}
	switch {
	case anyID:
		return tlsconfig.AuthorizeAny(), nil
	case td != "":
		t, err := spiffeid.TrustDomainFromString(td)
		if err != nil {
			return nil, fmt.Errorf("bad trust domain %q: %w", td, err)
		}
		return tlsconfig.AuthorizeMemberOf(t), nil
	default:
		parsed := make([]spiffeid.ID, 0, len(ids))
		for _, s := range ids {
			id, err := spiffeid.FromString(s)
			if err != nil {
				return nil, fmt.Errorf("bad SPIFFE ID %q: %w", s, err)
			}
			parsed = append(parsed, id)
		}
		if len(parsed) == 1 {
			return tlsconfig.AuthorizeID(parsed[0]), nil
		}
		return tlsconfig.AuthorizeOneOf(parsed...), nil
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func cmdServe(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	var c common
	c.register(fs)
	listen := fs.String("listen", "127.0.0.1:0", "TCP address to listen on")
	var allowIDs multiFlag
	fs.Var(&allowIDs, "allow-id", "accept this client SPIFFE ID (repeatable)")
	allowTD := fs.String("allow-td", "", "accept any client of this trust domain")
	allowAny := fs.Bool("allow-any", false, "accept any client with a valid SVID of a trusted domain")
	maxConns := fs.Int("max-conns", 0, "exit after this many connections were handled (0: never)")
	_ = fs.Parse(args)

	auth, err := authorizer(allowIDs, *allowTD, *allowAny)
	if err != nil {
		die(exitUsage, "serve: %v (use --allow-id, --allow-td or --allow-any)", err)
	}
	ctx, cancel := signalContext()
	defer cancel()
	src := c.source(ctx)
	defer src.Close()
	if svid, err := src.GetX509SVID(); err == nil {
		emit("svid %s", svid.ID)
	}

	ln, err := tls.Listen("tcp", *listen, tlsconfig.MTLSServerConfig(src, src, auth))
	if err != nil {
		die(exitFail, "listen %s: %v", *listen, err)
	}
	serveAll(ctx, cancel, ln, *maxConns, func(conn net.Conn) { serveConn(conn.(*tls.Conn), false) })
	return exitOK
}

// serveAll prints "listening <addr>", then handles each connection on its own goroutine until
// ctx ends or maxConns (if positive) connections were handled, and waits for them.
func serveAll(ctx context.Context, cancel context.CancelFunc, ln net.Listener, maxConns int,
	handle func(net.Conn)) {
	go func() { <-ctx.Done(); ln.Close() }()
	emit("listening %s", ln.Addr())

	var wg sync.WaitGroup
	var handled int
	var hmu sync.Mutex
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			logf("accept: %v", err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			handle(conn)
			hmu.Lock()
			handled++
			done := maxConns > 0 && handled >= maxConns
			hmu.Unlock()
			if done {
				ln.Close()
				cancel()
			}
		}()
	}
	wg.Wait()
}

// serveConn echoes one connection. With details, "accepted" also says whether the client resumed
// a session and the TLS version.
func serveConn(conn *tls.Conn, details bool) {
	defer conn.Close()
	remote := conn.RemoteAddr().String()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := conn.Handshake(); err != nil {
		emit("rejected %s: %v", remote, err)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	id, err := spiffetls.PeerIDFromConnectionState(conn.ConnectionState())
	if err != nil {
		emit("rejected %s: %v", remote, err)
		return
	}
	if details {
		state := conn.ConnectionState()
		emit("accepted %s resumed=%t version=%s", id, state.DidResume, versionName(state.Version))
	} else {
		emit("accepted %s", id)
	}
	n, err := io.Copy(conn, conn)
	if err != nil {
		logf("echo %s: %v", id, err)
	}
	_ = conn.CloseWrite()
	emit("closed %s bytes=%d", id, n)
}

func cmdDial(args []string) int {
	fs := flag.NewFlagSet("dial", flag.ExitOnError)
	var c common
	c.register(fs)
	addr := fs.String("addr", "", "server HOST:PORT")
	var expectIDs multiFlag
	fs.Var(&expectIDs, "expect-id", "require this server SPIFFE ID (repeatable: any of them)")
	expectTD := fs.String("expect-td", "", "accept any server of this trust domain")
	expectAny := fs.Bool("expect-any", false, "accept any server with a valid SVID of a trusted domain")
	message := fs.String("message", "", "bytes to send before half-closing")
	ioTimeout := fs.Duration("io-timeout", 15*time.Second, "deadline for the whole exchange")
	_ = fs.Parse(args)

	if *addr == "" {
		die(exitUsage, "dial: --addr is required")
	}
	auth, err := authorizer(expectIDs, *expectTD, *expectAny)
	if err != nil {
		die(exitUsage, "dial: %v (use --expect-id, --expect-td or --expect-any)", err)
	}
	ctx, cancel := signalContext()
	defer cancel()
	src := c.source(ctx)
	defer src.Close()

	d := &net.Dialer{Timeout: *ioTimeout}
	conn, err := tls.DialWithDialer(d, "tcp", *addr, tlsconfig.MTLSClientConfig(src, src, auth))
	if err != nil {
		die(exitFail, "handshake with %s failed: %v", *addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(*ioTimeout))
	if id, err := spiffetls.PeerIDFromConnectionState(conn.ConnectionState()); err == nil {
		logf("connected to %s", id)
	}
	// With TLS 1.3 the server checks our certificate after the client finished its side of the
	// handshake, so a rejection by the server shows up on the first read/write below.
	if _, err := io.WriteString(conn, *message); err != nil {
		die(exitFail, "write to %s failed: %v", *addr, peerAlert(conn, err))
	}
	if err := conn.CloseWrite(); err != nil {
		die(exitFail, "close-write to %s failed: %v", *addr, peerAlert(conn, err))
	}
	if _, err := io.Copy(os.Stdout, conn); err != nil {
		die(exitFail, "read from %s failed: %v", *addr, err)
	}
	return exitOK
}

// peerAlert: a write can fail (EPIPE/ECONNRESET) because the server already rejected our
// certificate and closed; the TLS alert saying why is usually still in the receive buffer.
func peerAlert(conn *tls.Conn, writeErr error) error {
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != nil && strings.Contains(err.Error(), "remote error") {
		return fmt.Errorf("%w (%v)", err, writeErr)
	}
	return writeErr
}

type svidJSON struct {
	ID        string    `json:"id"`
	Hint      string    `json:"hint,omitempty"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	ChainLen  int       `json:"chain_len"`
}

func cmdSvids(args []string) int {
	fs := flag.NewFlagSet("svids", flag.ExitOnError)
	var c common
	c.register(fs)
	waitFor := fs.String("wait-for-id", "", "keep watching until an SVID with this ID is present")
	_ = fs.Parse(args)
	if c.socket == "" {
		die(exitUsage, "--socket (or SPIFFE_ENDPOINT_SOCKET) is required")
	}
	ctx, cancel := signalContext()
	defer cancel()
	ctx, cancel2 := context.WithTimeout(ctx, c.timeout)
	defer cancel2()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(c.addr()))
	if err != nil {
		die(exitFail, "workload api client: %v", err)
	}
	defer client.Close()
	for {
		xc, err := client.FetchX509Context(ctx)
		if err == nil && (*waitFor == "" || hasID(xc.SVIDs, *waitFor)) {
			out := struct {
				SVIDs   []svidJSON `json:"svids"`
				Bundles []string   `json:"bundles"`
			}{}
			for _, s := range xc.SVIDs {
				leaf := s.Certificates[0]
				out.SVIDs = append(out.SVIDs, svidJSON{
					ID: s.ID.String(), Hint: s.Hint, Serial: leaf.SerialNumber.Text(16),
					NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, ChainLen: len(s.Certificates),
				})
			}
			for _, b := range xc.Bundles.Bundles() {
				out.Bundles = append(out.Bundles, b.TrustDomain().IDString())
			}
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(out)
			return exitOK
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("no SVID with ID %s", *waitFor)
			}
			die(exitNoSVIDs, "svids: %v", err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func hasID(svids []*x509svid.SVID, id string) bool {
	for _, s := range svids {
		if s.ID.String() == id {
			return true
		}
	}
	return false
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: spiffe-peer serve|dial|svids|proxy-backend|h2-connect[-server]|resume-dial|resume-serve [flags]   (spiffe-peer <cmd> -h for flags)")
	os.Exit(exitUsage)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var code int
	switch os.Args[1] {
	case "serve":
		code = cmdServe(os.Args[2:])
	case "dial":
		code = cmdDial(os.Args[2:])
	case "svids":
		code = cmdSvids(os.Args[2:])
	case "proxy-backend":
		code = cmdProxyBackend(os.Args[2:])
	case "h2-connect":
		code = cmdH2Connect(os.Args[2:])
	case "h2-connect-server":
		code = cmdH2ConnectServer(os.Args[2:])
	case "resume-dial":
		code = cmdResumeDial(os.Args[2:])
	case "resume-serve":
		code = cmdResumeServe(os.Args[2:])
	default:
		usage()
	}
	os.Exit(code)
}
