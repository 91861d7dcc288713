package builder

import (
	"bytes"
	"io"
)

// copyLines copies src to dst one line per Write, each ending in "\n". A line longer than
// maxLine bytes (newline excluded) is split into pieces of maxLine bytes, each ended with "\n"; a
// last line without a newline gets one. Memory is bounded by maxLine plus one read buffer, however
// much src holds. After dst fails, src is still read to EOF (and discarded) so that the
// writer is never blocked on a full pipe; werr is dst's first error, rerr src's.
func copyLines(dst io.Writer, src io.Reader, maxLine int) (werr, rerr error) {
	line := make([]byte, 0, maxLine+1) // a partial line carried from one read to the next
	chunk := make([]byte, 32*1024)
	emit := func(p []byte) {
		if werr == nil {
			_, werr = dst.Write(p)
		}
	}
	for {
		n, err := src.Read(chunk)
		p := chunk[:n]
		for len(p) > 0 {
			i := bytes.IndexByte(p, '\n')
			if i >= 0 && len(line)+i <= maxLine {
				if len(line) == 0 {
					emit(p[:i+1]) // the common case: a whole line in the chunk, no copy
				} else {
					emit(append(line, p[:i+1]...))
					line = line[:0]
				}
				p = p[i+1:]
				continue
			}
			room := maxLine - len(line)
			if i < 0 && len(p) <= room {
				line = append(line, p...)
				break
			}
			emit(append(append(line, p[:room]...), '\n'))
			line = line[:0]
			p = p[room:]
		}
		if err != nil {
			if len(line) > 0 {
				emit(append(line, '\n'))
			}
			if err == io.EOF {
				err = nil
			}
			return werr, err
		}
	}
}
