# Convenience targets. CI runs .ci/run; these are for people.
#
#   make test                 race tests of every package (what CI runs)
#   make fuzz                 every fuzz target, FUZZTIME each (default 5m)
#   make fuzz FUZZTIME=10s    a quick pass
#   make hostile              the hostile-input corpus test
#   make hostile-update       regenerate internal/hostile/testdata from its generator

FUZZTIME ?= 5m

.PHONY: test fuzz hostile hostile-update build vet

build:
	go build ./...

vet:
	go vet ./...

test:
	go test -race -count=1 -timeout 15m ./...

fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

hostile:
	go test -race -count=1 ./internal/hostile/

hostile-update:
	go test -count=1 -run TestGenerate ./internal/hostile/ -update
