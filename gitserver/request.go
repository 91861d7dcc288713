package gitserver

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
)

// Lengths in an update command: an object id in hex, and "<old> <new> ".
const (
	idHexLen   = 2 * len(plumbing.ZeroHash)
	commandLen = 2*idHexLen + 2
)

// decodeUpdateRequest reads the commands of a push, up to the flush that ends them:
// optional "shallow <id>" lines, then one command per pkt-line, the first with the
// capabilities after a NUL. A command is exactly `<old> <new> <ref>`: two object ids of 40
// hex digits and a ref name, one space apart, the name running to the end of the line (or
// the NUL), one trailing LF dropped, without spaces or control characters.
//
// It is stricter than go-git's ReferenceUpdateRequest.Decode, which scans a command with
// Sscanf("%s %s %s") and so ignores whatever follows the ref name: `<old> <new>
// refs/heads/main garbage` would update main. git's receive-pack takes the rest of the line
// as the name, which a space makes invalid. The request's Packfile is nil: the pack is the
// caller's to read.
func decodeUpdateRequest(r io.Reader) (*packp.ReferenceUpdateRequest, error) {
	req := packp.NewReferenceUpdateRequest()
	sc := pktline.NewScanner(r)
	for {
		if !sc.Scan() {
			if err := sc.Err(); err != nil {
				return nil, err
			}
			return nil, io.ErrUnexpectedEOF
		}
		line := sc.Bytes()
		switch {
		case len(line) == 0: // flush
			if len(req.Commands) == 0 {
				return nil, errors.New("no commands before the flush")
			}
			return req, nil
		case len(req.Commands) == 0 && bytes.HasPrefix(line, []byte("shallow ")):
			h, err := parseID(bytes.TrimSuffix(line[len("shallow "):], []byte("\n")))
			if err != nil {
				return nil, fmt.Errorf("shallow line: %w", err)
			}
			if req.Shallow == nil {
				req.Shallow = &h
			}
			continue
		}
		if len(req.Commands) == 0 { // the capabilities come with the first command
			if i := bytes.IndexByte(line, 0); i >= 0 {
				if err := req.Capabilities.Decode(bytes.TrimSuffix(line[i+1:], []byte("\n"))); err != nil {
					return nil, fmt.Errorf("capabilities: %w", err)
				}
				line = line[:i]
			}
		}
		cmd, err := parseUpdateCommand(line)
		if err != nil {
			return nil, err
		}
		req.Commands = append(req.Commands, cmd)
	}
}

// parseUpdateCommand parses one command of an update request: `<old> <new> <ref>`.
func parseUpdateCommand(line []byte) (*packp.Command, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	if len(line) <= commandLen || line[idHexLen] != ' ' || line[commandLen-1] != ' ' {
		return nil, fmt.Errorf("malformed command %.120q: want <old> <new> <ref>", line)
	}
	old, err := parseID(line[:idHexLen])
	if err != nil {
		return nil, fmt.Errorf("malformed command %.120q: old value: %w", line, err)
	}
	updated, err := parseID(line[idHexLen+1 : commandLen-1])
	if err != nil {
		return nil, fmt.Errorf("malformed command %.120q: new value: %w", line, err)
	}
	name := line[commandLen:]
	if i := bytes.IndexFunc(name, func(r rune) bool { return r <= ' ' || r == 0x7f }); i >= 0 {
		return nil, fmt.Errorf("malformed command %.120q: the ref name holds a space or a control character", line)
	}
	if old.IsZero() && updated.IsZero() {
		return nil, fmt.Errorf("malformed command %.120q: both values are zero", line)
	}
	return &packp.Command{Name: plumbing.ReferenceName(name), Old: old, New: updated}, nil
}

// parseID parses an object id of 40 hex digits.
func parseID(b []byte) (plumbing.Hash, error) {
	var h plumbing.Hash
	if len(b) != idHexLen {
		return h, fmt.Errorf("object id of %d characters, want %d", len(b), idHexLen)
	}
	if _, err := hex.Decode(h[:], b); err != nil {
		return h, errors.New("object id is not hex")
	}
	return h, nil
}
