// Package nri is capd's plugin for the Node Resource Interface of
// containerd (and CRI-O): it brings capd to Kubernetes nodes, where no OCI
// hooks.d hook runs.
//
// For a pod annotated io.capd.acquire (every container), or a container
// named in an io.capd.acquire/container.NAME pod annotation (an empty value:
// capd, and nothing to acquire, for a container that only publishes), it adjusts the
// container at CreateContainer: a small tmpfs at /run/capd with the static
// capd binary and the directory of the agent's socket bound in read-only
// (/run/capd/agent: the directory, so that a restarted agent's new socket
// file is reached too) and CAPD_SOCKET naming the socket, so workloads run
// "/run/capd/capd acquire OWNER:NAME -- CMD" as under the OCI hook. With
// io.capd.required=true (or io.capd.required/container.NAME) it first asks
// the agent whether the container could acquire every entry and fails the
// container's creation with the agent's reason when not. At StartContainer,
// when the container's init exists, it registers the container with the
// agent by a pidfd of that init, as "pod:NAMESPACE/POD/NAME" (alias
// "pod:NAMESPACE/POD"); the agent takes the cgroup from
// the pidfd and keeps the registration while that cgroup has processes.
// StopContainer, RemoveContainer and RemovePodSandbox unregister (the agent
// refuses while processes remain, so a survivor keeps the pod's identity).
// Synchronize, at every connection to the runtime, registers the running
// annotated containers again; so does every new connection to the agent
// (after an agent restart), from the pidfds the plugin holds.
//
// Fd ownership: the plugin holds one pidfd per registered container
// (taken at StartContainer or Synchronize), closed when the container is
// removed or its pod goes; the agent gets copies. It owns one client
// connection for requests and one it waits on to learn of agent restarts.
//
// Concurrency: Plugin.mu guards the table of registered containers and
// Plugin.cmu the request connection; neither is held during a request to
// the agent (the client serializes its own requests). WatchAgent runs on a
// goroutine of its own, blocked on its connection.
package nri
