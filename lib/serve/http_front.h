// serve's HTTP/1.1 transport: a listening socket, one reader thread that takes every connection's
// bytes without blocking (epoll) until a whole request (head and body) is in, and a pool of workers
// that run the handler on whole requests only. A slow or silent client costs a buffer and a table
// entry, never a worker: each request has a deadline to arrive in (`request_timeout`), a body size
// limit (413 past it) and a head size limit (431), and the number of open connections is bounded.
// Keep-alive, `Expect: 100-continue`, and chunked responses (server-sent events) are supported;
// a request body must come with Content-Length (411 otherwise).
//
// Why not cpp-httplib's server (which `serve` used before): it gives each connection a thread from
// the moment it is accepted and bounds only the time between two reads, so 100 clients that each
// send one header line every two seconds held every thread and kept real requests waiting for a
// minute. Its 0.11 (Debian 12's) also hides a connection's socket from the handler.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lf::serve {

struct HttpRequest {
  std::string method;
  std::string path;   // the target up to '?'
  std::string query;  // after '?', undecoded
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  std::string remote_addr;
  int remote_port = 0;
  // The first header named `name` (lower case), or nullptr.
  const std::string* header(std::string_view name) const;
};

// Writes one response to one request on the request's connection (blocking, from a worker).
class HttpResponder {
 public:
  HttpResponder(int fd, bool keep_alive) : fd_(fd), keep_alive_(keep_alive) {}
  // A whole response with Content-Length. False when the client is gone.
  bool send(int status, std::string_view content_type, std::string_view body,
            const std::vector<std::pair<std::string, std::string>>& headers = {});
  // A chunked response (Transfer-Encoding: chunked): begin, chunks, end. Each is false once the
  // client is gone; the connection then closes.
  bool begin_stream(int status, std::string_view content_type,
                    const std::vector<std::pair<std::string, std::string>>& headers = {});
  bool write_chunk(std::string_view data);
  bool end_stream();
  // True once the client has closed its end (an orderly close or a reset), seen without reading.
  bool peer_closed() const;
  bool responded() const { return state_ != State::kNone; }
  // Whether the connection can carry the next request after this response.
  bool reusable() const { return keep_alive_ && !failed_ && (state_ == State::kSent || state_ == State::kStreamEnded); }

 private:
  enum class State { kNone, kSent, kStreaming, kStreamEnded };
  bool write_all(std::string_view data);
  std::string head(int status, std::string_view content_type,
                   const std::vector<std::pair<std::string, std::string>>& headers, std::string_view length_header);
  int fd_;
  bool keep_alive_;
  bool failed_ = false;
  State state_ = State::kNone;
};

using HttpHandler = std::function<void(const HttpRequest&, HttpResponder&)>;

struct HttpFrontOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                        // 0: any free port (port() says which)
  int workers = 8;                        // requests handled at once
  int64_t max_body_bytes = 16ll << 20;    // 413 past it
  int64_t max_head_bytes = 64 << 10;      // request line and headers; 431 past it
  double request_timeout = 5.0;           // seconds from a request's first byte to its last; 408 past it
  double idle_timeout = 60.0;             // seconds a connection may wait between requests
  int max_connections = 1024;             // open connections; past it the oldest idle or slowest one is closed
};

// Serving statistics for /metrics.
struct HttpFrontCounters {
  int64_t open_connections = 0;
  int64_t timed_out = 0;       // connections closed for a request that did not arrive in time
  int64_t refused_large = 0;   // 413 and 431
  int64_t evicted = 0;         // closed to stay under max_connections
};

class HttpFront {
 public:
  // Binds and listens (InputError if the address cannot be had); serves once start() is called.
  HttpFront(HttpFrontOptions options, HttpHandler handler);
  ~HttpFront();
  HttpFront(const HttpFront&) = delete;
  HttpFront& operator=(const HttpFront&) = delete;

  int port() const;
  void start();
  // Stops taking connections and requests, waits for the handlers that run to return, closes every
  // connection. Safe to call twice.
  void stop();
  HttpFrontCounters counters() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// A short reason phrase for a status code ("OK", "Not Found", ...).
const char* http_reason(int status);

}  // namespace lf::serve
