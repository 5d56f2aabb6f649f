package confine

// Program and Refused let the filter's own program be run through a BPF
// interpreter by the tests.
var (
	Program = program
	Refused = refused
)
