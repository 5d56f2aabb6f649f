package source

import (
	"bufio"
	"bytes"
	"io"
	"regexp"
	"strconv"
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

var (
	// progress2 records: "bytes pct rate eta", with "(xfr#N, ...)" only
	// once a file is done; the records in between carry the bytes alone.
	progressLine = regexp.MustCompile(`^\s*([\d,.]+)\s+\d+%(?:.*xfr#(\d+))?`)
	statLine     = regexp.MustCompile(`^(Number of regular files transferred|Number of deleted files|Total bytes sent|Total bytes received):\s*([\d,.]+)`)
)

// parseOutput reads rsync's standard output (itemized changes, progress2
// records separated by carriage returns, stats2) until EOF, calling progress
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
		if m := progressLine.FindStringSubmatch(line); m != nil {
			if m[2] != "" {
				files = number(m[2])
			}
			if progress != nil {
				progress(number(m[1]), files)
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

// number parses rsync's digit-grouped numbers ("1,234,567").
func number(s string) int64 {
	n, _ := strconv.ParseInt(strings.NewReplacer(",", "", ".", "").Replace(s), 10, 64)
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
