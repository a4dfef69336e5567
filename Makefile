# modelcrypt demo: model -> ModelPack artifact -> encrypted -> kind cluster with a demo KBS and a
# vLLM pod whose init container is modelcrypt. `make` lists the targets; `make -n TARGET` shows
# what a target would run. Walkthrough: deploy/README.md.

# ---- what to package ----------------------------------------------------------------------------
MODEL        ?= Qwen/Qwen3-0.6B
MODEL_NAME   ?= qwen3
MODEL_DIR    ?= models/$(MODEL_NAME)
# ---- where it goes ------------------------------------------------------------------------------
REGISTRY     ?= localhost:5001
REPO         ?= models/$(MODEL_NAME)
TAG          ?= v1
ENC_TAG      ?= $(TAG)-encrypted
DEC_TAG      ?= $(TAG)-decrypted
BUILD_DIR    ?= build
OCI_DIR      ?= $(BUILD_DIR)/$(MODEL_NAME).oci
PULL_DIR     ?= $(BUILD_DIR)/pulled/$(MODEL_NAME)
# ---- keys ---------------------------------------------------------------------------------------
KEYS_DIR     ?= keys
RSA_KEY      ?= $(KEYS_DIR)/$(MODEL_NAME)-rsa.pem
KEK          ?= $(KEYS_DIR)/$(MODEL_NAME).kek
# The KBS resource holding the KEK (deploy/kbs/kbs.yaml mounts the KEK at this path).
KBS_RESOURCE ?= default/key/$(MODEL_NAME)
# ---- tools --------------------------------------------------------------------------------------
MODELCRYPT   ?= target/release/modelcrypt
CARGO        ?= cargo
MUSL_TARGET  ?= x86_64-unknown-linux-musl
CONTAINER_ENGINE ?= $(shell command -v docker >/dev/null 2>&1 && echo docker || echo podman)
KIND         ?= kind
KUBECTL      ?= kubectl
# ---- cluster ------------------------------------------------------------------------------------
KIND_CLUSTER  ?= modelcrypt
REGISTRY_NAME ?= kind-registry
REGISTRY_PORT ?= 5001
NAMESPACE     ?= modelcrypt
INIT_IMAGE    ?= $(REGISTRY)/modelcrypt:latest
PODMAN_MACHINE ?= podman-machine-default

REF     = docker://$(REGISTRY)/$(REPO):$(TAG)
ENC_REF = docker://$(REGISTRY)/$(REPO):$(ENC_TAG)
DEC_REF = docker://$(REGISTRY)/$(REPO):$(DEC_TAG)
# podman refuses a plain-HTTP registry unless told; docker allows localhost:* by default.
PUSH_FLAGS = $(if $(filter podman,$(notdir $(CONTAINER_ENGINE))),--tls-verify=false,)
KIND_ENV   = $(if $(filter podman,$(notdir $(CONTAINER_ENGINE))),KIND_EXPERIMENTAL_PROVIDER=podman,)

.DEFAULT_GOAL := help
.PHONY: help fetch oci push gen-keys encrypt decrypt pull kind init-container run clean \
	configure-machine modelcrypt image-context

help: ## List the targets (the default)
	@echo "Usage: make TARGET [VARIABLE=value ...]   (make -n TARGET shows the commands)"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | \
		sed -E 's/^([a-zA-Z_-]+):.*## (.*)$$/\1|\2/' | \
		while IFS='|' read -r target text; do printf '  %-18s %s\n' "$$target" "$$text"; done
	@echo
	@echo "Variables: MODEL=$(MODEL) REGISTRY=$(REGISTRY) TAG=$(TAG) CONTAINER_ENGINE=$(CONTAINER_ENGINE)"

modelcrypt: ## Build the modelcrypt binary (cargo build --release)
	$(CARGO) build --release --bin modelcrypt

fetch: ## Download MODEL into MODEL_DIR with the Hugging Face CLI (hf)
	@mkdir -p $(MODEL_DIR)
	if command -v hf >/dev/null 2>&1; then \
		hf download $(MODEL) --local-dir $(MODEL_DIR); \
	elif command -v huggingface-cli >/dev/null 2>&1; then \
		huggingface-cli download $(MODEL) --local-dir $(MODEL_DIR); \
	else \
		echo "No Hugging Face CLI: pip install -U huggingface_hub, or put the model files in $(MODEL_DIR)" >&2; \
		exit 1; \
	fi

oci: modelcrypt ## Pack MODEL_DIR as a ModelPack artifact (OCI layout under BUILD_DIR)
	@mkdir -p $(BUILD_DIR)
	$(MODELCRYPT) pack $(MODEL_DIR) oci:$(OCI_DIR):$(TAG) --name $(MODEL_NAME)

push: modelcrypt ## Copy the packed artifact to REGISTRY/REPO:TAG
	$(MODELCRYPT) --plain-http copy oci:$(OCI_DIR):$(TAG) $(REF)

gen-keys: modelcrypt ## Generate an RSA key pair (JWE recipient) and a 32-byte KEK (KBS recipient)
	@mkdir -p $(KEYS_DIR)
	test -f $(RSA_KEY) || $(MODELCRYPT) keygen --type rsa --out $(RSA_KEY)
	test -f $(KEK) || $(MODELCRYPT) keygen --type kek --out $(KEK)

encrypt: modelcrypt ## Encrypt every layer to the RSA key and kbs:///KBS_RESOURCE, push as ENC_TAG
	$(MODELCRYPT) --plain-http encrypt $(REF) $(ENC_REF) \
		--recipient jwe:$(RSA_KEY).pub \
		--recipient kbs:///$(KBS_RESOURCE) --kek $(KEK)

decrypt: modelcrypt ## Decrypt ENC_TAG with the RSA private key into DEC_TAG (round-trip check)
	$(MODELCRYPT) --plain-http decrypt $(ENC_REF) $(DEC_REF) --decryption-key $(RSA_KEY)

pull: modelcrypt ## Pull, verify and decrypt ENC_TAG into PULL_DIR with the KEK, as the pod does
	@mkdir -p $(dir $(PULL_DIR))
	$(MODELCRYPT) --plain-http pull $(ENC_REF) --to $(PULL_DIR) --kek $(KEK)

kind: ## Create the kind cluster and the local registry (localhost:5001)
	if [ "$$($(CONTAINER_ENGINE) inspect -f '{{.State.Running}}' $(REGISTRY_NAME) 2>/dev/null)" != "true" ]; then \
		$(CONTAINER_ENGINE) run -d --restart=always -p 127.0.0.1:$(REGISTRY_PORT):5000 \
			--network bridge --name $(REGISTRY_NAME) registry:2; \
	fi
	$(KIND_ENV) $(KIND) get clusters | grep -qx $(KIND_CLUSTER) || \
		$(KIND_ENV) $(KIND) create cluster --name $(KIND_CLUSTER) --config deploy/kind/cluster.yaml
	for node in $$($(KIND_ENV) $(KIND) get nodes --name $(KIND_CLUSTER)); do \
		$(CONTAINER_ENGINE) exec $$node mkdir -p /etc/containerd/certs.d/localhost:$(REGISTRY_PORT); \
		printf '[host."http://%s:5000"]\n' $(REGISTRY_NAME) | \
			$(CONTAINER_ENGINE) exec -i $$node cp /dev/stdin /etc/containerd/certs.d/localhost:$(REGISTRY_PORT)/hosts.toml; \
	done
	$(CONTAINER_ENGINE) network connect kind $(REGISTRY_NAME) 2>/dev/null || true
	$(KUBECTL) apply -f deploy/kind/local-registry-hosting.yaml

IMAGE_CONTEXT ?= $(BUILD_DIR)/image
STATIC_BIN    ?= target/$(MUSL_TARGET)/release/modelcrypt
CA_BUNDLE     ?= /etc/ssl/certs/ca-certificates.crt

image-context: ## Stage the static binary, CA certificates, passwd and group for Containerfile
	$(CARGO) build --release --target $(MUSL_TARGET) --bin modelcrypt
	mkdir -p $(IMAGE_CONTEXT)
	cp $(STATIC_BIN) $(IMAGE_CONTEXT)/modelcrypt
	cp $(CA_BUNDLE) $(IMAGE_CONTEXT)/ca-certificates.crt
	cp deploy/image/passwd deploy/image/group $(IMAGE_CONTEXT)/

init-container: image-context ## Build the static binary and the init-container image, push it to REGISTRY
	$(CONTAINER_ENGINE) build -f Containerfile -t $(INIT_IMAGE) $(IMAGE_CONTEXT)
	$(CONTAINER_ENGINE) push $(PUSH_FLAGS) $(INIT_IMAGE)

run: ## Deploy the demo KBS, load the KEK into it, deploy the modelcrypt + vLLM pod
	$(KUBECTL) apply -f deploy/namespace.yaml
	$(KUBECTL) -n $(NAMESPACE) create secret generic kbs-resources \
		--from-file=$(MODEL_NAME)-kek=$(KEK) --dry-run=client -o yaml | $(KUBECTL) apply -f -
	$(KUBECTL) apply -f deploy/kbs/kbs.yaml
	$(KUBECTL) -n $(NAMESPACE) rollout restart deployment/kbs
	$(KUBECTL) -n $(NAMESPACE) rollout status deployment/kbs --timeout=180s
	$(KUBECTL) apply -f deploy/model/qwen3.yaml
	$(KUBECTL) -n $(NAMESPACE) rollout status deployment/qwen3 --timeout=900s
	@echo "Try: $(KUBECTL) -n $(NAMESPACE) port-forward svc/qwen3 8000:8000 & curl -s localhost:8000/v1/models"

clean: ## Delete the kind cluster, the registry container and BUILD_DIR (keys stay)
	-$(KIND_ENV) $(KIND) delete cluster --name $(KIND_CLUSTER)
	-$(CONTAINER_ENGINE) rm -f $(REGISTRY_NAME)
	rm -rf $(BUILD_DIR)

configure-machine: ## Start a podman machine that trusts the plain-HTTP local registry
	podman machine inspect $(PODMAN_MACHINE) >/dev/null 2>&1 || \
		podman machine init --cpus 4 --memory 12288 --disk-size 60 $(PODMAN_MACHINE)
	podman machine start $(PODMAN_MACHINE) 2>/dev/null || true
	podman machine ssh $(PODMAN_MACHINE) "sudo mkdir -p /etc/containers/registries.conf.d && \
		printf '[[registry]]\nlocation = \"localhost:$(REGISTRY_PORT)\"\ninsecure = true\n' | \
		sudo tee /etc/containers/registries.conf.d/modelcrypt-local-registry.conf"
	podman machine stop $(PODMAN_MACHINE)
	podman machine start $(PODMAN_MACHINE)
