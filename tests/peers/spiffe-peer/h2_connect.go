package main

// HTTP/2 CONNECT over mTLS (the HBONE shape) with Go's HTTP/2 stack, golang.org/x/net/http2, an
// implementation nobody in this project wrote. SVIDs and bundles come from PEM files, so no
// Workload API is needed.
//
//	spiffe-peer h2-connect --cert C --key K --bundle td=path... --server-id ID --addr host:port
//	    --authority host:port [--streams N] [--size BYTES]
//	    Opens N concurrent CONNECT streams on one connection; each sends BYTES random bytes,
//	    half-closes and expects "<sha256 hex> <count>" back (the digest backend). Prints
//	    "status <code>" for a refused stream and finally "done streams=N ok=M".
//
//	spiffe-peer h2-connect-server --cert C --key K --bundle td=path... --allow-id ID
//	    [--listen addr]
//	    Serves CONNECT streams: prints "connect authority=<a> peer=<id> forwarded=<f>", answers
//	    200 and echoes the stream until the client's END_STREAM, then ends its own.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
)

type fileIdentity struct {
	cert, key string
	bundles   multiFlag
}

func (f *fileIdentity) register(fs *flag.FlagSet) {
	fs.StringVar(&f.cert, "cert", "", "SVID certificate chain (PEM)")
	fs.StringVar(&f.key, "key", "", "SVID private key (PEM)")
	fs.Var(&f.bundles, "bundle", "trust domain bundle as td=path (repeatable)")
}

func (f *fileIdentity) load() (*x509svid.SVID, *x509bundle.Set) {
	svid, err := x509svid.Load(f.cert, f.key)
	if err != nil {
		die(exitFail, "SVID from %s: %v", f.cert, err)
	}
	set := x509bundle.NewSet()
	for _, b := range f.bundles {
		td, path, ok := strings.Cut(b, "=")
		if !ok {
			die(exitUsage, "--bundle %q: expected td=path", b)
		}
		t, err := spiffeid.TrustDomainFromString(td)
		if err != nil {
			die(exitUsage, "--bundle %q: %v", b, err)
		}
		bundle, err := x509bundle.Load(t, path)
		if err != nil {
			die(exitFail, "bundle %s: %v", path, err)
		}
		set.Add(bundle)
	}
	return svid, set
}

// clientConfig is go-spiffe's mTLS client config with the loaded identity, accepting only a
// server with the SPIFFE ID serverID.
func (f *fileIdentity) clientConfig(serverID string) *tls.Config {
	svid, bundles := f.load()
	sid, err := spiffeid.FromString(serverID)
	if err != nil {
		die(exitUsage, "--server-id: %v", err)
	}
	return tlsconfig.MTLSClientConfig(svid, bundles, tlsconfig.AuthorizeID(sid))
}

func cmdH2Connect(args []string) int {
	fs := flag.NewFlagSet("h2-connect", flag.ExitOnError)
	var id fileIdentity
	id.register(fs)
	serverID := fs.String("server-id", "", "expected SPIFFE ID of the server")
	addr := fs.String("addr", "", "server tunnel address host:port")
	authority := fs.String("authority", "", "CONNECT authority")
	streams := fs.Int("streams", 1, "concurrent streams")
	size := fs.Int("size", 1000, "bytes per stream")
	_ = fs.Parse(args)

	cfg := id.clientConfig(*serverID)
	// One connection for every stream: dial once, then give the transport that connection.
	conn, err := tls.Dial("tcp", *addr, withALPN(cfg))
	if err != nil {
		die(exitFail, "dial %s: %v", *addr, err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		die(exitFail, "server agreed on ALPN %q, not h2", p)
	}
	cc, err := (&http2.Transport{}).NewClientConn(conn)
	if err != nil {
		die(exitFail, "HTTP/2 client: %v", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := 0; i < *streams; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if oneStream(cc, *addr, *authority, *size) {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	emit("done streams=%d ok=%d", *streams, ok)
	return exitOK
}

func withALPN(cfg *tls.Config) *tls.Config {
	cfg.NextProtos = []string{"h2"}
	return cfg
}

// oneStream sends `size` random bytes on a CONNECT stream, half-closes, and checks the digest
// the backend answers with.
func oneStream(cc *http2.ClientConn, addr, authority string, size int) bool {
	payload := make([]byte, size)
	_, _ = rand.Read(payload)
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodConnect, "https://"+addr, pr)
	if err != nil {
		logf("request: %v", err)
		return false
	}
	req.Host = authority // :authority of the CONNECT
	go func() {
		_, _ = pw.Write(payload)
		_ = pw.Close() // END_STREAM: the half-close
	}()
	resp, err := cc.RoundTrip(req)
	if err != nil {
		logf("CONNECT %s: %v", authority, err)
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		emit("status %d", resp.StatusCode)
		return false
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		logf("read: %v", err)
		return false
	}
	sum := sha256.Sum256(payload)
	want := fmt.Sprintf("%s %d", hex.EncodeToString(sum[:]), size)
	if string(got) != want {
		logf("digest mismatch: got %q want %q", got, want)
		return false
	}
	return true
}

func cmdH2ConnectServer(args []string) int {
	ln := fileServer("h2-connect-server", args, func(cfg *tls.Config) { withALPN(cfg) })
	ctx, cancel := signalContext()
	defer cancel()
	srv := &http2.Server{}
	serveAll(ctx, cancel, ln, 0, func(conn net.Conn) {
		// http2.Server reads the TLS version and ALPN from the connection state: handshake first.
		if err := conn.(*tls.Conn).Handshake(); err != nil {
			logf("handshake: %v", err)
			conn.Close()
			return
		}
		srv.ServeConn(conn, &http2.ServeConnOpts{Context: context.Background(),
			Handler: connectHandler(peerID(conn.(*tls.Conn).ConnectionState()))})
	})
	return exitOK
}

// fileServer parses the flags of a server mode with PEM-file identities (--cert, --key, --bundle,
// --listen, --allow-id) and listens with go-spiffe's mTLS server config, adjusted by tune.
func fileServer(name string, args []string, tune func(*tls.Config)) net.Listener {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	var id fileIdentity
	id.register(fs)
	listen := fs.String("listen", "127.0.0.1:0", "TCP address to listen on")
	var allowIDs multiFlag
	fs.Var(&allowIDs, "allow-id", "accept this client SPIFFE ID (repeatable)")
	_ = fs.Parse(args)

	svid, bundles := id.load()
	auth, err := authorizer(allowIDs, "", false)
	if err != nil {
		die(exitUsage, "%s: %v", name, err)
	}
	cfg := tlsconfig.MTLSServerConfig(svid, bundles, auth)
	tune(cfg)
	ln, err := tls.Listen("tcp", *listen, cfg)
	if err != nil {
		die(exitFail, "listen %s: %v", *listen, err)
	}
	return ln
}

// peerID is the SPIFFE ID of the connection's verified client, "?" if it has none.
func peerID(state tls.ConnectionState) string {
	if len(state.PeerCertificates) == 0 {
		return "?"
	}
	id, err := x509svid.IDFromCert(state.PeerCertificates[0])
	if err != nil {
		return "?"
	}
	return id.String()
}

func connectHandler(peer string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { serveConnect(w, r, peer) })
}

func serveConnect(w http.ResponseWriter, r *http.Request, peer string) {
	if r.Method != http.MethodConnect {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	emit("connect authority=%s peer=%s forwarded=%s", r.Host, peer, r.Header.Get("Forwarded"))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush()
		}
		if err != nil {
			return // io.EOF: the client's END_STREAM; returning ends ours
		}
	}
}
