package main

// spiffe-peer proxy-backend: a plain-TCP backend that decodes the PROXY protocol header a
// spiffe-tunnel server tunnel sends before the peer's data, with github.com/pires/go-proxyproto
// (an implementation nobody in this project wrote), then echoes the rest.
//
//	spiffe-peer proxy-backend --listen 127.0.0.1:0 [--max-conns N]
//	    Prints "listening <addr>" once ready; for every connection one line
//	    "proxy <json>" with what the header said (see headerReport), then echoes the bytes that
//	    follow the header and half-closes. A connection without a header reports
//	    {"proxy": false} and is echoed whole, so a test can show that nothing was prepended.

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"hash/crc32"
	"io"
	"net"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

// The TLV type spiffe-tunnel (like istio/ztunnel) uses for the peer's SPIFFE ID.
const tlvSpiffeID = 0xD0

type endpointReport struct {
	IP   string `json:"ip"`
	Port int    `json:"port"`
}

type sslReport struct {
	ClientSSL      bool   `json:"client_ssl"`
	ClientCertConn bool   `json:"client_cert_conn"`
	ClientCertSess bool   `json:"client_cert_sess"`
	Verified       bool   `json:"verified"`
	Version        string `json:"version"`
	Cipher         string `json:"cipher"`
	CN             string `json:"cn,omitempty"`
}

type headerReport struct {
	Proxy       bool            `json:"proxy"`
	Error       string          `json:"error,omitempty"`
	Version     int             `json:"version,omitempty"`
	Command     string          `json:"command,omitempty"`
	Family      string          `json:"family,omitempty"`
	Source      *endpointReport `json:"source,omitempty"`
	Destination *endpointReport `json:"destination,omitempty"`
	Authority   string          `json:"authority,omitempty"`
	SSL         *sslReport      `json:"ssl,omitempty"`
	SpiffeID    string          `json:"spiffe_id,omitempty"`
	TLVTypes    []int           `json:"tlv_types,omitempty"`
	// CRC32C: "absent", "valid" or "invalid", checked with Go's hash/crc32 Castagnoli table over
	// the raw header as received.
	CRC32C      string `json:"crc32c,omitempty"`
	HeaderBytes int    `json:"header_bytes,omitempty"`
	Remote      string `json:"remote"`
}

func cmdProxyBackend(args []string) int {
	fs := flag.NewFlagSet("proxy-backend", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "TCP address to listen on")
	maxConns := fs.Int("max-conns", 0, "exit after this many connections were handled (0: never)")
	_ = fs.Parse(args)

	ctx, cancel := signalContext()
	defer cancel()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		die(exitFail, "listen %s: %v", *listen, err)
	}
	serveAll(ctx, cancel, ln, *maxConns, func(conn net.Conn) { serveProxied(conn.(*net.TCPConn)) })
	return exitOK
}

func serveProxied(conn *net.TCPConn) {
	defer conn.Close()
	report := headerReport{Remote: conn.RemoteAddr().String()}
	reader := bufio.NewReaderSize(conn, 64<<10)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	raw := peekHeader(reader)
	header, err := proxyproto.Read(reader)
	_ = conn.SetReadDeadline(time.Time{})
	switch {
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
	case err != nil:
		report.Error = err.Error()
		emitReport(report)
		return
	default:
		describe(&report, header, raw)
	}
	emitReport(report)
	if _, err := io.Copy(conn, reader); err != nil {
		logf("echo %s: %v", report.Remote, err)
	}
	_ = conn.CloseWrite()
}

// peekHeader returns a copy of the v2 header's bytes without consuming them, or nil.
func peekHeader(r *bufio.Reader) []byte {
	fixed, err := r.Peek(16)
	if err != nil || string(fixed[:12]) != string(proxyproto.SIGV2) {
		return nil
	}
	whole, err := r.Peek(16 + int(binary.BigEndian.Uint16(fixed[14:16])))
	if err != nil {
		return nil
	}
	return append([]byte(nil), whole...)
}

func describe(report *headerReport, h *proxyproto.Header, raw []byte) {
	report.Proxy = true
	report.Version = int(h.Version)
	report.Command = map[bool]string{true: "PROXY", false: "LOCAL"}[h.Command.IsProxy()]
	switch {
	case h.TransportProtocol.IsStream() && h.TransportProtocol.IsIPv4():
		report.Family = "tcp4"
	case h.TransportProtocol.IsStream() && h.TransportProtocol.IsIPv6():
		report.Family = "tcp6"
	case h.TransportProtocol.IsUnspec():
		report.Family = "unspec"
	default:
		report.Family = "other"
	}
	if src, dst, ok := h.TCPAddrs(); ok {
		report.Source = &endpointReport{IP: src.IP.String(), Port: src.Port}
		report.Destination = &endpointReport{IP: dst.IP.String(), Port: dst.Port}
	}
	tlvs, err := h.TLVs()
	if err != nil {
		report.Error = "TLVs: " + err.Error()
		return
	}
	report.CRC32C = "absent"
	for _, t := range tlvs {
		report.TLVTypes = append(report.TLVTypes, int(t.Type))
		switch t.Type {
		case proxyproto.PP2_TYPE_AUTHORITY:
			report.Authority = string(t.Value)
		case tlvSpiffeID:
			report.SpiffeID = string(t.Value)
		case proxyproto.PP2_TYPE_CRC32C:
			report.CRC32C = checkCRC32C(raw, t.Value)
		}
	}
	if ssl, ok := tlvparse.FindSSL(tlvs); ok {
		s := &sslReport{ClientSSL: ssl.ClientSSL(), ClientCertConn: ssl.ClientCertConn(),
			ClientCertSess: ssl.ClientCertSess(), Verified: ssl.Verified()}
		s.Version, _ = ssl.SSLVersion()
		s.Cipher, _ = ssl.SSLCipher()
		s.CN, _ = ssl.ClientCN()
		report.SSL = s
	}
	report.HeaderBytes = len(raw)
}

// checkCRC32C applies proxy-protocol.txt 2.2.3: the checksum of the whole header with the
// checksum's own four bytes zeroed. The field is found by its value right after a 0x03 type and
// length 4, which a header carries once.
func checkCRC32C(raw []byte, value []byte) string {
	if len(value) != 4 || raw == nil {
		return "invalid"
	}
	for i := 16; i+7 <= len(raw); i++ {
		if raw[i] == 0x03 && raw[i+1] == 0 && raw[i+2] == 4 && string(raw[i+3:i+7]) == string(value) {
			zeroed := append([]byte(nil), raw...)
			copy(zeroed[i+3:i+7], []byte{0, 0, 0, 0})
			if crc32.Checksum(zeroed, crc32.MakeTable(crc32.Castagnoli)) == binary.BigEndian.Uint32(value) {
				return "valid"
			}
			return "invalid"
		}
	}
	return "invalid"
}

func emitReport(r headerReport) {
	b, _ := json.Marshal(r)
	emit("proxy %s", b)
}
