package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// recipe is what a Dockerfile's final stage says an image holds. ociimage
// builds from it, so the Dockerfiles people build with Docker and the
// images the local clusters run cannot drift apart.
type recipe struct {
	// Base is the final stage's FROM: "scratch" or debian:bookworm-slim.
	Base string
	// Packages are the Debian packages its apt-get install names.
	Packages []string
	// Commands are the rest of its RUN lines (checks such as the rsync
	// version), run in the root filesystem after the packages.
	Commands []string
	// Copies are the COPY --from=build sources (file names under the build
	// stage's /out) and where they go.
	Copies []copyStep
	// User and Entrypoint as written.
	User       string
	Entrypoint []string
}

// copyStep is one COPY --from=build: these build outputs to Dir (a
// directory when it ends in "/", else the one file's new name).
type copyStep struct {
	Files []string
	Dir   string
}

// destinations maps each build output to its path in the image.
func (c copyStep) destinations() map[string]string {
	out := map[string]string{}
	for _, f := range c.Files {
		if strings.HasSuffix(c.Dir, "/") {
			out[f] = c.Dir + f
		} else {
			out[f] = c.Dir
		}
	}
	return out
}

// parseDockerfile reads the final stage of a Dockerfile written in the
// project's narrow style: line continuations, one FROM per stage, RUN
// lines chained with &&, COPY --from=build /out/... DIR/, USER, and an
// ENTRYPOINT in exec form. Anything else in the final stage is an error,
// so a Dockerfile edit the tool does not understand fails the build instead
// of being dropped.
func parseDockerfile(text string) (recipe, error) {
	var r recipe
	build := false // in the build stage, whose steps the caller's go build does
	for _, line := range logicalLines(text) {
		verb, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		verb = strings.ToUpper(verb)
		if verb == "FROM" {
			base, stage, _ := strings.Cut(rest, " ")
			build = strings.EqualFold(strings.TrimSpace(stage), "AS build")
			r = recipe{Base: base}
			continue
		}
		if build {
			continue
		}
		switch verb {
		case "RUN":
			r.addRun(rest)
		case "COPY":
			c, err := parseCopy(rest)
			if err != nil {
				return recipe{}, err
			}
			r.Copies = append(r.Copies, c)
		case "USER":
			r.User = rest
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &r.Entrypoint); err != nil {
				return recipe{}, fmt.Errorf("ENTRYPOINT must be in exec form: %q: %w", rest, err)
			}
		default:
			return recipe{}, fmt.Errorf("%s in the final stage is not supported: %q", verb, line)
		}
	}
	if r.Base != "scratch" && r.Base != "debian:bookworm-slim" {
		return recipe{}, fmt.Errorf("final stage FROM %q: only scratch and debian:bookworm-slim are built here", r.Base)
	}
	return r, nil
}

// addRun splits a RUN of the final stage into the packages it installs and
// the commands it runs after them; apt's own housekeeping is mmdebstrap's.
func (r *recipe) addRun(run string) {
	for _, part := range splitAnd(run) {
		part = strings.TrimSpace(part)
		fields := strings.Fields(part)
		switch {
		case len(fields) == 0:
		case part == "apt-get update", part == "rm -rf /var/lib/apt/lists/*":
		case len(fields) > 2 && fields[0] == "apt-get" && fields[1] == "install":
			for _, f := range fields[2:] {
				if !strings.HasPrefix(f, "-") {
					r.Packages = append(r.Packages, f)
				}
			}
		default:
			r.Commands = append(r.Commands, part)
		}
	}
}

// parseCopy reads COPY --from=build /out/a /out/b DIR/ (or /out/a /FILE):
// the final stage takes only the build stage's outputs.
func parseCopy(rest string) (copyStep, error) {
	fields := strings.Fields(rest)
	if len(fields) < 3 || fields[0] != "--from=build" {
		return copyStep{}, fmt.Errorf("COPY %q: want --from=build /out/NAME... DST", rest)
	}
	c := copyStep{Dir: fields[len(fields)-1]}
	for _, src := range fields[1 : len(fields)-1] {
		name, ok := strings.CutPrefix(src, "/out/")
		if !ok || strings.Contains(name, "/") {
			return copyStep{}, fmt.Errorf("COPY source %q: want /out/NAME", src)
		}
		c.Files = append(c.Files, name)
	}
	return c, nil
}

// logicalLines joins continued lines and drops comments and blank lines.
func logicalLines(text string) []string {
	var out []string
	var cur strings.Builder
	for _, l := range strings.Split(text, "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "#") || (t == "" && cur.Len() == 0) {
			continue
		}
		cont := strings.HasSuffix(t, "\\")
		cur.WriteString(strings.TrimSuffix(t, "\\"))
		cur.WriteString(" ")
		if !cont {
			if s := strings.TrimSpace(cur.String()); s != "" {
				out = append(out, s)
			}
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

// readRecipe parses the Dockerfile at path.
func readRecipe(path string) (recipe, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return recipe{}, fmt.Errorf("dockerfile: %w", err)
	}
	r, err := parseDockerfile(string(b))
	if err != nil {
		return recipe{}, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// splitAnd splits a shell command list at the && that are outside quotes.
func splitAnd(s string) []string {
	var parts []string
	var quote byte
	start := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '&' && i+1 < len(s) && s[i+1] == '&':
			parts = append(parts, s[start:i])
			start = i + 2
			i++
		}
	}
	return append(parts, s[start:])
}
