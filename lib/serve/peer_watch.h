// Noticing that an HTTP client went away while its response is still being computed. cpp-httplib
// 0.11 gives a handler no way to see its connection (0.12's is_connection_closed came later), and a
// non-streaming response writes nothing until the end, so a vanished client would keep its row to
// the last token. The request knows its peer's address and port; the connected socket with that
// peer on the server's port is the request's own, and a peek at it tells whether the peer closed.
#pragma once

#include <string>

namespace lf::serve {

// This process's TCP socket connected from `peer_addr`:`peer_port` to local port `local_port`, or -1.
int find_peer_socket(const std::string& peer_addr, int peer_port, int local_port);

// True when the peer has closed its end of `fd` (an orderly close or a reset), seen without consuming
// anything; false while it is open (with or without data waiting).
bool peer_closed(int fd);

}  // namespace lf::serve
