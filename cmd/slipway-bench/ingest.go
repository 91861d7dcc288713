package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// ingestCipher is the transport of the pack ingest figure, the same against both servers:
// AES-GCM has assembly in Go and in OpenSSH, so the transport costs little on either side
// and the figure is about storing and indexing the pack.
const ingestCipher = "aes128-gcm@openssh.com"

// rawReceivePack pushes a prebuilt pack (creating refs/heads/main at newSHA) over SSH with a
// minimal receive-pack client and returns the time from the first byte of the request to
// the moment the server has ingested the pack: the report's "unpack" line (git
// receive-pack, after index-pack) or slipway's "-----> deploying" line (written once the
// pack is stored and indexed, before the deploy starts), whichever comes first. The session
// is then drained to its end.
func rawReceivePack(ctx context.Context, addr, user string, signer gossh.Signer, remoteCmd, newSHA, packPath string) (time.Duration, error) {
	cfg := &gossh.ClientConfig{
		User:            user,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), // our own server on loopback
		Timeout:         10 * time.Second,
		Config:          gossh.Config{Ciphers: []string{ingestCipher}},
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	c, chans, reqs, err := gossh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return 0, err
	}
	client := gossh.NewClient(c, chans, reqs)
	defer client.Close()
	stopOnCancel := context.AfterFunc(ctx, func() { client.Close() })
	defer stopOnCancel()

	sess, err := client.NewSession()
	if err != nil {
		return 0, err
	}
	defer sess.Close()
	stdin, err := sess.StdinPipe()
	if err != nil {
		return 0, err
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	if err := sess.Start(remoteCmd); err != nil {
		return 0, err
	}
	br := bufio.NewReaderSize(stdout, 64*1024)
	// The advertisement, up to its flush.
	for {
		p, flush, err := readPkt(br)
		if err != nil {
			return 0, fmt.Errorf("advertisement: %w (%s)", err, tail(stderr.String(), 500))
		}
		if flush {
			break
		}
		if bytes.HasPrefix(p, []byte("ERR ")) {
			return 0, fmt.Errorf("server: %s", p)
		}
	}

	pack, err := os.Open(packPath)
	if err != nil {
		return 0, err
	}
	defer pack.Close()
	start := time.Now()
	writeErr := make(chan error, 1)
	go func() {
		bw := bufio.NewWriterSize(stdin, 256*1024)
		zero := strings.Repeat("0", 40)
		writePkt(bw, zero+" "+newSHA+" refs/heads/main\x00report-status side-band-64k agent=slipway-bench\n")
		bw.WriteString("0000")
		_, err := io.Copy(bw, pack)
		if err == nil {
			err = bw.Flush()
		}
		stdin.Close()
		writeErr <- err
	}()

	var took time.Duration
	var report, progress bytes.Buffer
	for {
		p, flush, err := readPkt(br)
		if err == io.EOF || flush {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("response: %w", err)
		}
		if len(p) == 0 {
			continue
		}
		switch p[0] {
		case 1:
			report.Write(p[1:])
			if took == 0 && bytes.Contains(p, []byte("unpack ")) {
				took = time.Since(start)
			}
		case 2:
			progress.Write(p[1:])
			if took == 0 && bytes.Contains(p, []byte("-----> deploying")) {
				took = time.Since(start)
			}
		case 3:
			return 0, fmt.Errorf("server error: %s", p[1:])
		}
	}
	if err := <-writeErr; err != nil {
		return 0, fmt.Errorf("send pack: %w", err)
	}
	sess.Wait()
	if took == 0 {
		return 0, fmt.Errorf("no ingest marker; report %q, progress %q, stderr %q", report.String(), tail(progress.String(), 500), tail(stderr.String(), 500))
	}
	if bytes.Contains(report.Bytes(), []byte("unpack ")) && !bytes.Contains(report.Bytes(), []byte("unpack ok")) {
		return 0, fmt.Errorf("pack rejected: %q", report.String())
	}
	return took, nil
}

// readPkt reads one pkt-line: its payload, or flush=true for "0000".
func readPkt(r *bufio.Reader) (payload []byte, flush bool, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, false, err
	}
	n, err := strconv.ParseUint(string(hdr[:]), 16, 16)
	if err != nil {
		return nil, false, fmt.Errorf("bad pkt-line length %q", hdr)
	}
	if n == 0 {
		return nil, true, nil
	}
	if n < 4 {
		return nil, false, errors.New("bad pkt-line length")
	}
	payload = make([]byte, n-4)
	_, err = io.ReadFull(r, payload)
	return payload, false, err
}

func writePkt(w io.Writer, s string) {
	fmt.Fprintf(w, "%04x%s", len(s)+4, s)
}

// loadSigner reads an OpenSSH private key.
func loadSigner(path string) (gossh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return gossh.ParsePrivateKey(b)
}
