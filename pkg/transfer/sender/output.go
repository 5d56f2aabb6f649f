package sender

import (
	"bufio"
	"bytes"
	"io"
	"regexp"
	"strings"
)

// Progress is the live state of a running transfer.
type Progress struct {
	// Attempt is the try number, from 1.
	Attempt int
	// BytesDone is the size of the file data handled so far (rsync's
	// progress2 count).
	BytesDone int64
	// FilesDone is the number of files whose data was sent so far.
	FilesDone int64
}

// Stats are rsync's summary figures of one transfer.
type Stats struct {
	// BytesSent and BytesReceived are rsync's protocol bytes, before ssh.
	BytesSent, BytesReceived int64
	// FilesTransferred is the number of regular files whose data was sent.
	FilesTransferred int64
	// FilesDeleted is the number of files deleted on the destination.
	FilesDeleted int64
	// Summary is rsync's summary lines (--info=stats2).
	Summary string
}

// statLine matches the stats2 lines Stats keeps figures of.
var statLine = regexp.MustCompile(`^(Number of regular files transferred|Number of deleted files|Total bytes sent|Total bytes received):\s*([\d,.]+)`)

// parseOutput reads rsync's standard output (progress2 records separated
// by carriage returns, stats2, and any other messages) until EOF, calling progress
// for each progress record, and returns the summary.
func parseOutput(r io.Reader, progress func(bytes, files int64)) Stats {
	var st Stats
	var summary []string
	var files int64
	inSummary := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sc.Split(splitCRLF)
	for sc.Scan() {
		line := sc.Text()
		if done, xfr, ok := progressRecord(line); ok {
			if xfr > 0 {
				files = xfr
			}
			if progress != nil {
				progress(done, files)
			}
			continue
		}
		if strings.HasPrefix(line, "Number of files:") {
			inSummary = true
		}
		if !inSummary || strings.TrimSpace(line) == "" {
			continue
		}
		summary = append(summary, line)
		if m := statLine.FindStringSubmatch(line); m != nil {
			n := number(m[2])
			switch m[1] {
			case "Number of regular files transferred":
				st.FilesTransferred = n
			case "Number of deleted files":
				st.FilesDeleted = n
			case "Total bytes sent":
				st.BytesSent = n
			case "Total bytes received":
				st.BytesReceived = n
			}
		}
	}
	st.Summary = strings.Join(summary, "\n")
	return st
}

// progressRecord reads a progress2 record, "bytes pct% rate eta", with
// "(xfr#N, ...)" once a file is done (xfr 0 until then). It is read by hand:
// rsync writes one per file sent, a hundred thousand for as many small
// files.
func progressRecord(line string) (done, xfr int64, ok bool) {
	fields := strings.Fields(line)
	if len(fields) < 2 || !strings.HasSuffix(fields[1], "%") || fields[0][0] < '0' || fields[0][0] > '9' {
		return 0, 0, false
	}
	if i := strings.Index(line, "xfr#"); i >= 0 {
		rest := line[i+len("xfr#"):]
		end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
		if end < 0 {
			end = len(rest)
		}
		xfr = number(rest[:end])
	}
	return number(fields[0]), xfr, true
}

// number parses rsync's digit-grouped numbers ("1,234,567").
func number(s string) int64 {
	var n int64
	for _, c := range s {
		if c >= '0' && c <= '9' {
			n = n*10 + int64(c-'0')
		}
	}
	return n
}

// splitCRLF splits on \n and \r, as progress records end in \r.
func splitCRLF(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// lastLine is the last line of s: where rsync says why it stopped.
func lastLine(s string) string {
	s = string(bytes.TrimSpace([]byte(s)))
	if i := bytes.LastIndexByte([]byte(s), '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// limitedWriter keeps the first bytes written and drops the rest.
type limitedWriter struct {
	w    io.Writer
	left int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.left > 0 {
		n := min(len(p), l.left)
		_, _ = l.w.Write(p[:n])
		l.left -= n
	}
	return len(p), nil
}
