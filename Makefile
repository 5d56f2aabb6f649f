# Ferry's build, in kubebuilder's shape. Tools are built from the Go module
# proxy at pinned versions into bin/ (gitignored); nothing is downloaded
# otherwise. `test` runs `lint` beside the tests.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

ROOT := $(CURDIR)
BIN := $(ROOT)/bin
export PATH := $(BIN):$(PATH)
export GOFLAGS := -buildvcs=false

CONTROLLER_TOOLS_VERSION ?= v0.23.0
STATICCHECK_VERSION ?= v0.8.2
CSI_TEST_VERSION ?= v5.6.0
PROMETHEUS_VERSION ?= v0.316.0
KWOK_VERSION ?= v0.8.0
K8S_VERSION ?= v1.37.2
ETCD_VERSION ?= v3.6.16
export K8S_VERSION ETCD_VERSION

CONTROLLER_GEN := $(BIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
STATICCHECK := $(BIN)/staticcheck-$(STATICCHECK_VERSION)
CSI_SANITY := $(BIN)/csi-sanity-$(CSI_TEST_VERSION)
PROMETHEUS := $(BIN)/prometheus-$(PROMETHEUS_VERSION)
PROMTOOL := $(BIN)/promtool-$(PROMETHEUS_VERSION)
KWOK := $(BIN)/kwok-$(KWOK_VERSION)
TESTENV := $(BIN)/testenv
# Tests find the real control plane here (controller-runtime's envtest reads it).
export KUBEBUILDER_ASSETS := $(TESTENV)

GO_TEST_FLAGS ?= -count=1
TEST_TIMEOUT ?= 30m

.PHONY: all
all: build

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRDs into deploy/crd/ and the controller's and node agent's RBAC into deploy/*/rbac/.
	$(CONTROLLER_GEN) crd paths=./pkg/api/... output:crd:artifacts:config=deploy/crd
	$(CONTROLLER_GEN) rbac:roleName=ferry-controller paths=./pkg/controller/... output:rbac:artifacts:config=deploy/controller/rbac
	$(CONTROLLER_GEN) rbac:roleName=ferry-nodeagent paths=./pkg/agent/... output:rbac:artifacts:config=deploy/nodeagent/rbac

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code.
	$(CONTROLLER_GEN) object paths=./pkg/api/...

.PHONY: fmt
fmt: ## gofmt the tree.
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## go vet, also of the data plane's fault hooks (build tag ferryfault).
	go vet ./...
	go vet -tags ferryfault ./pkg/transfer/...

.PHONY: lint
lint: vet $(STATICCHECK) ## go vet, staticcheck and a gofmt check.
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags ferryfault ./pkg/transfer/...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "not gofmt'ed: $$unformatted"; exit 1; fi

##@ Build

.PHONY: build
build: ## Build the controller, the node agent, its helper and the kubectl plugin into bin/.
	go build -o $(BIN)/ ./cmd/...

.PHONY: kubectl-ferry
kubectl-ferry: ## Build the kubectl plugin into bin/kubectl-ferry (put it on the PATH: kubectl ferry --help).
	go build -o $(BIN)/kubectl-ferry ./cmd/kubectl-ferry

##@ Test

.PHONY: deps
deps: ## Install the system packages the tests use (Debian; run as root).
	hack/install-deps.sh

.PHONY: testenv
testenv: ## Build the real Kubernetes control plane (kube-apiserver, etcd, ...) into bin/testenv.
	hack/build-testenv.sh

.PHONY: images
images: deps ## Build Ferry's images and the real nodes' test images from their Dockerfiles, without Docker, into bin/images (IMAGE_REGISTRY, IMAGE_TAG).
	hack/build-images.sh

.PHONY: need-root
need-root:
	@if [ "$$(id -u)" != 0 ]; then echo "make test needs root: it installs packages and its tests mount volumes and make network namespaces. Run it as root, or run make test-unit (no root, no cluster)." >&2; exit 1; fi

.PHONY: test-unit
test-unit: ## Pure-logic tests: no root, no cluster.
	go test $(GO_TEST_FLAGS) -short ./...

.PHONY: test
test: need-root deps testenv images $(CONTROLLER_GEN) $(CSI_SANITY) $(STATICCHECK) $(PROMETHEUS) $(PROMTOOL) ## Everything: set-up, lint (beside the tests, which mostly wait on clusters), then unit and integration tests against real components.
	set +e; \
	$(MAKE) --no-print-directory lint > $(BIN)/lint.log 2>&1 & lint=$$!; \
	CONTROLLER_GEN=$(CONTROLLER_GEN) CSI_SANITY=$(CSI_SANITY) PROMETHEUS=$(PROMETHEUS) PROMTOOL=$(PROMTOOL) go test $(GO_TEST_FLAGS) -timeout $(TEST_TIMEOUT) -v ./...; rc=$$?; \
	go test $(GO_TEST_FLAGS) -tags ferryfault -timeout $(TEST_TIMEOUT) -v -run 'TestFaultsBetweenChanges|TestShutdownRacesAStartingTransfer' ./pkg/transfer/ || rc=1; \
	wait $$lint || { rc=1; echo "make lint failed:"; }; cat $(BIN)/lint.log; \
	exit $$rc

.PHONY: demo
demo: need-root deps testenv images ## Two local clusters of real nodes, Ferry installed from deploy/, replicating a database pod's volume with the spec's manifests (root; Ctrl-C tears down).
	go run ./test/demo/cmd/ferry-demo

.PHONY: demo-down
demo-down: ## Remove what a killed demo left behind (real nodes' processes and cgroups, mounts, loop devices, network namespaces).
	go run ./test/demo/cmd/ferry-demo --down

.PHONY: cluster
cluster: deps testenv images ## Start two local clusters (control plane, CSI driver, sidecars, kube-proxy, kubelet and containerd in node namespaces) until Ctrl-C (root; REAL_NODES=0: simulated nodes).
	go run ./test/cluster/cmd/ferry-cluster $(if $(filter 0,$(REAL_NODES)),,-images bin/images)

.PHONY: bench
bench: deps testenv images ## Benchmark Ferry's data plane against stock rsync/OpenSSH on loopback, then a sync on real nodes against VolSync's pod-per-sync shape (root; about 20 minutes, several GiB; FERRY_BENCH_CASES=B picks data-plane cases).
	go test -count=1 -v -run "^$$" -bench BenchmarkDataPlane -benchtime 1x -timeout 60m ./pkg/transfer/ | grep -v -e '^    [a-z_]*\.go:[0-9]*: "level"' -e '^    [a-z_]*\.go:[0-9]*: sshd: '
	go test -count=1 -v -run "^$$" -bench BenchmarkSyncOverhead -benchtime 1x -timeout 30m ./test/controller/ | grep 'per-sync overhead'
	go test -count=1 -run "^$$" -bench BenchmarkPodPerSyncVersusAgent -benchtime 1x -timeout 30m ./test/e2e/

.PHONY: scale
scale: need-root deps testenv $(KWOK) ## Two scenarios, each writing its section of docs/scale.md with a table and a plot: many one-minute schedules on the real agents of two local clusters (FERRY_SCALE_N=100,250,500, FERRY_SCALE_MINUTES=10 per level), then thousands of pairs on 1,000 kwok nodes with an agent simulator (FERRY_SIM_N=2000,5000,10000 on FERRY_SIM_SCHEDULE="*/5 * * * *"). Root; hours.
	FERRY_SCALE_DOC=$(ROOT)/docs/scale.md go test -count=1 -v -run "^$$" -bench BenchmarkScale -benchtime 1x -timeout 180m ./test/controller/ | grep -E '^(\s+scale_test.go|ok|FAIL|---)'
	KWOK=$(KWOK) FERRY_SCALE_DOC=$(ROOT)/docs/scale.md go test -count=1 -v -run "^$$" -bench BenchmarkSimulatedNodes -benchtime 1x -timeout 300m ./test/kwok/ | grep -E '^(\s+simulated_test.go|ok|FAIL|---)'

.PHONY: soak
soak: need-root deps testenv ## 1,000 syncs through the CRs on the local clusters, counting mounts, loop devices, fds, goroutines, processes, cgroups, temp dirs and objects before and after: no growth (root; FERRY_SOAK_SYNCS; make test runs 30).
	FERRY_SOAK_SYNCS=$${FERRY_SOAK_SYNCS:-1000} go test -count=1 -v -run 'TestController/soak' -timeout 90m ./test/controller/ \
		| grep -v -e '^    [a-z_]*\.go:[0-9]*: "level"' -e '^        [IWE][0-9]'

.PHONY: fuzz
fuzz: deps ## Random changes between syncs, a random seed: 1,000 rounds of clean syncs (skipped exactly when nothing changed, incremental otherwise), then 2,000 with a fault in each; the replica checked each round (root; FERRY_FUZZ_SEED, FERRY_FUZZ_ROUNDS, FERRY_FAULT_ROUNDS).
	export FERRY_FUZZ_SEED=$${FERRY_FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	FERRY_FUZZ_ROUNDS=$${FERRY_FUZZ_ROUNDS:-1000} go test -count=1 -v -run TestSyncsFollowRandomChanges -timeout 60m ./pkg/transfer/; \
	FERRY_FAULT_ROUNDS=$${FERRY_FAULT_ROUNDS:-2000} go test -count=1 -v -tags ferryfault -run TestFaultsBetweenChanges -timeout 90m ./pkg/transfer/ \
		| grep -v -e '^    [a-z_]*\.go:[0-9]*: "level"'

##@ Tools

$(CONTROLLER_GEN):
	GOBIN=$(BIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(BIN)/controller-gen $@

$(CSI_SANITY):
	GOBIN=$(BIN) go install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$(CSI_TEST_VERSION)
	mv $(BIN)/csi-sanity $@

$(STATICCHECK):
	GOBIN=$(BIN) go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(BIN)/staticcheck $@

# Prometheus and promtool check deploy/monitoring's rules and dashboard in
# make test (built without the web UI's assets: the API is what the tests use).
$(PROMETHEUS):
	GOBIN=$(BIN) go install github.com/prometheus/prometheus/cmd/prometheus@$(PROMETHEUS_VERSION)
	mv $(BIN)/prometheus $@

$(PROMTOOL):
	GOBIN=$(BIN) go install github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_VERSION)
	mv $(BIN)/promtool $@

# kwok simulates make scale's thousand nodes.
$(KWOK):
	GOBIN=$(BIN) go install sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION)
	mv $(BIN)/kwok $@

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-12s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
