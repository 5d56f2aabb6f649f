package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseDockerfile(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       recipe
		err        string
	}{{
		name: "build stage skipped, final stage read",
		text: `# comment
FROM golang:1.26 AS build
WORKDIR /src
RUN go build -o /out/ ./cmd/x
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends rsync ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rsync --version | awk '{ if (a && b) exit 1 }'
COPY --from=build /out/x /out/y /usr/bin/
USER 1:2
ENTRYPOINT ["/usr/bin/x", "-v"]
`,
		want: recipe{Base: "debian:bookworm-slim", Packages: []string{"rsync", "ca-certificates"},
			Commands: []string{`rsync --version | awk '{ if (a && b) exit 1 }'`},
			Copies:   []copyStep{{Files: []string{"x", "y"}, Dir: "/usr/bin/"}}, User: "1:2", Entrypoint: []string{"/usr/bin/x", "-v"}},
	}, {
		name: "scratch with a renamed file",
		text: "FROM scratch\nCOPY --from=build /out/controller /controller\nENTRYPOINT [\"/controller\"]\n",
		want: recipe{Base: "scratch", Copies: []copyStep{{Files: []string{"controller"}, Dir: "/controller"}}, Entrypoint: []string{"/controller"}},
	}, {
		name: "an instruction the tool would drop is refused",
		text: "FROM scratch\nENV A=b\n",
		err:  "ENV in the final stage is not supported",
	}, {
		name: "a base the tool cannot build is refused",
		text: "FROM alpine:3\n",
		err:  `final stage FROM "alpine:3"`,
	}, {
		name: "shell-form entrypoint is refused",
		text: "FROM scratch\nENTRYPOINT /x\n",
		err:  "exec form",
	}, {
		name: "a COPY from the context is refused",
		text: "FROM scratch\nCOPY x /x\n",
		err:  "want --from=build",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseDockerfile(tc.text)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestCopyDestinations(t *testing.T) {
	assert.Equal(t, map[string]string{"a": "/usr/bin/a", "b": "/usr/bin/b"},
		copyStep{Files: []string{"a", "b"}, Dir: "/usr/bin/"}.destinations())
	assert.Equal(t, map[string]string{"controller": "/controller"},
		copyStep{Files: []string{"controller"}, Dir: "/controller"}.destinations())
}
