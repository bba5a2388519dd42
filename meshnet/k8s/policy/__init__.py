"""Kubernetes NetworkPolicy (networking.k8s.io/v1) for the pods of this node.

Sans-IO core: `parse` (API JSON -> `model`), `compile` (model + this node's pod addresses
-> `ruleset`), `render` (ruleset -> nft script, whole or as a diff), `interpret` (a packet
through a ruleset, in Python), `denials` (NFLOG'd packets -> log lines), and `evaluate`
(the spec's reference decision, kept apart from all of these). docs/kubernetes.md
("NetworkPolicy") describes the enforcement points and how to debug a denied flow.
"""
