#include "serve/http_front.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "core/error.h"
#include "core/strings.h"

namespace lf::serve {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kSendTimeoutSeconds = 30;  // a client that stops reading its response is dropped after this
constexpr auto kLinger = std::chrono::seconds(2);  // a refused connection's half-close, at most

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r')) --e;
  return std::string(s.substr(b, e - b));
}

// The front's own refusals carry OpenAI's error object, as the handler's do.
std::string error_body(int status, const std::string& message) {
  const char* type = status == 413 || status == 431 ? "RequestTooLargeError" : status == 408 ? "TimeoutError" : "BadRequestError";
  return "{\"error\": {\"message\": \"" + message + "\", \"type\": \"" + type + "\", \"param\": null, \"code\": " +
         std::to_string(status) + "}}";
}

void set_blocking(int fd, bool blocking) {
  const int flags = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, blocking ? (flags & ~O_NONBLOCK) : (flags | O_NONBLOCK));
}

// A connection between requests, or while its next request arrives (owned by the reader thread).
struct Conn {
  int fd = -1;
  std::string addr;
  int port = 0;
  std::string buffer;                    // bytes read and not yet part of a handled request
  Clock::time_point since;               // accepted, or handed back after a response
  std::optional<Clock::time_point> started;  // the first byte of the request being read
  bool continue_sent = false;
  // Refused and half-closed: what the client still sends is read and dropped until it closes or
  // this time passes. Closing at once with its bytes unread would make the kernel send a reset,
  // which can destroy the refusal before the client reads it (a 413 while the body is on its way).
  std::optional<Clock::time_point> lingering_until;
};

// A parsed request head: where the body starts and how long it is.
struct Head {
  HttpRequest request;
  size_t body_at = 0;
  int64_t body_length = 0;
  bool keep_alive = true;
  bool expect_continue = false;
};

// Parses the head in `buffer` (which holds "\r\n\r\n" at `end`). On a malformed head: nullopt and
// `error` (status, message).
std::optional<Head> parse_head(const std::string& buffer, size_t end, std::pair<int, std::string>& error) {
  Head h;
  h.body_at = end + 4;
  std::string_view text(buffer.data(), end);
  size_t line_end = text.find("\r\n");
  const std::string_view line = text.substr(0, line_end);
  const size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos || sp2 == sp1) {
    error = {400, "malformed request line"};
    return std::nullopt;
  }
  h.request.method = std::string(line.substr(0, sp1));
  const std::string target(line.substr(sp1 + 1, sp2 - sp1 - 1));
  const std::string_view version = line.substr(sp2 + 1);
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    error = {version.rfind("HTTP/", 0) == 0 ? 505 : 400, "unsupported HTTP version"};
    return std::nullopt;
  }
  h.keep_alive = version == "HTTP/1.1";
  const size_t q = target.find('?');
  h.request.path = target.substr(0, q);
  if (q != std::string::npos) h.request.query = target.substr(q + 1);
  if (h.request.path.empty() || h.request.path[0] != '/') {
    error = {400, "malformed request target"};
    return std::nullopt;
  }
  std::optional<int64_t> length;
  while (line_end != std::string_view::npos) {
    const size_t from = line_end + 2;
    line_end = text.find("\r\n", from);
    const std::string_view header = text.substr(from, line_end == std::string_view::npos ? text.npos : line_end - from);
    const size_t colon = header.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      error = {400, "malformed header line"};
      return std::nullopt;
    }
    std::string name = lower(std::string(header.substr(0, colon)));
    std::string value = trim(header.substr(colon + 1));
    if (name == "content-length") {
      if (value.empty() || value.size() > 18 || value.find_first_not_of("0123456789") != std::string::npos ||
          (length && *length != std::stoll(value))) {
        error = {400, "malformed Content-Length"};
        return std::nullopt;
      }
      length = std::stoll(value);
    } else if (name == "transfer-encoding") {
      error = {411, "a request body must be sent with Content-Length (chunked request bodies are not accepted)"};
      return std::nullopt;
    } else if (name == "connection") {
      const std::string v = lower(value);
      if (v.find("close") != std::string::npos) h.keep_alive = false;
      if (v.find("keep-alive") != std::string::npos) h.keep_alive = true;
    } else if (name == "expect") {
      if (lower(value) != "100-continue") {
        error = {417, "only Expect: 100-continue is understood"};
        return std::nullopt;
      }
      h.expect_continue = true;
    }
    h.request.headers.emplace_back(std::move(name), std::move(value));
  }
  h.body_length = length.value_or(0);
  return h;
}

bool send_nonblocking(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return false;  // a full socket buffer or a gone client: this is a best-effort refusal
  }
  return true;
}

}  // namespace

const std::string* HttpRequest::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (k == name) return &v;
  return nullptr;
}

const char* http_reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

// ---- HttpResponder ----

bool HttpResponder::write_all(std::string_view data) {
  if (failed_) return false;
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    failed_ = true;  // gone, reset, or not reading for kSendTimeoutSeconds
    return false;
  }
  return true;
}

std::string HttpResponder::head(int status, std::string_view content_type,
                                const std::vector<std::pair<std::string, std::string>>& headers,
                                std::string_view length_header) {
  std::string h = "HTTP/1.1 " + std::to_string(status) + " " + http_reason(status) + "\r\n";
  if (!content_type.empty()) h += "Content-Type: " + std::string(content_type) + "\r\n";
  for (const auto& [k, v] : headers) h += k + ": " + v + "\r\n";
  h += std::string(length_header) + "\r\n";
  h += keep_alive_ ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
  return h;
}

bool HttpResponder::send(int status, std::string_view content_type, std::string_view body,
                         const std::vector<std::pair<std::string, std::string>>& headers) {
  if (state_ != State::kNone) return false;
  state_ = State::kSent;
  std::string out = head(status, content_type, headers, "Content-Length: " + std::to_string(body.size()));
  if (body.size() <= (64u << 10)) {
    out.append(body);  // one write: no small second segment waiting on delayed ACKs
    return write_all(out);
  }
  return write_all(out) && write_all(body);
}

bool HttpResponder::begin_stream(int status, std::string_view content_type,
                                 const std::vector<std::pair<std::string, std::string>>& headers) {
  if (state_ != State::kNone) return false;
  state_ = State::kStreaming;
  return write_all(head(status, content_type, headers, "Transfer-Encoding: chunked"));
}

bool HttpResponder::write_chunk(std::string_view data) {
  if (state_ != State::kStreaming) return false;
  if (data.empty()) return !failed_;  // an empty chunk would end the stream
  char size[32];
  const int n = std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  std::string out(size, static_cast<size_t>(n));
  out.append(data);
  out += "\r\n";
  return write_all(out);
}

bool HttpResponder::end_stream() {
  if (state_ != State::kStreaming) return false;
  state_ = State::kStreamEnded;
  return write_all("0\r\n\r\n");
}

bool HttpResponder::peer_closed() const {
  if (failed_) return true;
  char byte;
  const ssize_t n = ::recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) return true;
  if (n > 0) return false;
  return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

// ---- HttpFront ----

struct HttpFront::State {
  HttpFrontOptions options;
  HttpHandler handler;
  int listen_fd = -1, epoll_fd = -1, wake_fd = -1;
  int port = 0;

  struct Task {
    Conn conn;
    HttpRequest request;
    bool keep_alive = true;
  };
  std::mutex mutex;
  std::condition_variable work;
  std::deque<Task> tasks;            // whole requests waiting for a worker
  std::deque<Conn> returned;         // connections handed back by workers (keep-alive)
  bool stopping = false;

  std::map<int, Conn> conns;  // reader thread only: connections reading their next request
  std::thread reader;
  std::vector<std::thread> workers;
  bool started = false, stopped = false;

  std::atomic<int64_t> timed_out{0}, refused_large{0}, evicted{0}, open{0};

  void wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd, &one, sizeof one);
  }

  void close_conn(int fd) {
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    conns.erase(fd);
    --open;
  }

  void refuse(Conn& c, int status, const std::string& message) {
    const std::string body = error_body(status, message);
    send_nonblocking(c.fd, "HTTP/1.1 " + std::to_string(status) + " " + http_reason(status) +
                               "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                               "\r\nConnection: close\r\n\r\n" + body);
    ::shutdown(c.fd, SHUT_WR);
    c.buffer.clear();
    c.buffer.shrink_to_fit();
    c.lingering_until = Clock::now() + kLinger;
  }

  // Takes whole requests off `c`'s buffer: hands the first to a worker (the connection goes with it),
  // refuses a malformed or oversized one. False when the connection left the reader.
  bool advance(Conn& c) {
    size_t skip = 0;  // CRLFs before a request line are ignored (RFC 9112 2.2)
    while (skip + 1 < c.buffer.size() && c.buffer[skip] == '\r' && c.buffer[skip + 1] == '\n') skip += 2;
    if (skip) c.buffer.erase(0, skip);
    if (c.buffer.empty()) return true;
    if (!c.started) c.started = Clock::now();
    const size_t end = c.buffer.find("\r\n\r\n");
    if (end == std::string::npos) {
      if (static_cast<int64_t>(c.buffer.size()) > options.max_head_bytes) {
        ++refused_large;
        refuse(c, 431, "the request line and headers exceed " + std::to_string(options.max_head_bytes) + " bytes");
        return false;
      }
      return true;
    }
    if (static_cast<int64_t>(end) > options.max_head_bytes) {
      ++refused_large;
      refuse(c, 431, "the request line and headers exceed " + std::to_string(options.max_head_bytes) + " bytes");
      return false;
    }
    std::pair<int, std::string> error;
    std::optional<Head> head = parse_head(c.buffer, end, error);
    if (!head) {
      refuse(c, error.first, error.second);
      return false;
    }
    if (head->body_length > options.max_body_bytes) {
      ++refused_large;
      refuse(c, 413, "the request body has " + std::to_string(head->body_length) + " bytes; this server takes at most " +
                         std::to_string(options.max_body_bytes) + " (serve.max_body_bytes)");
      return false;
    }
    const size_t total = head->body_at + static_cast<size_t>(head->body_length);
    if (c.buffer.size() < total) {
      if (head->expect_continue && !c.continue_sent) {
        c.continue_sent = true;
        send_nonblocking(c.fd, "HTTP/1.1 100 Continue\r\n\r\n");
      }
      return true;
    }
    Task task;
    task.request = std::move(head->request);
    task.request.body = c.buffer.substr(head->body_at, static_cast<size_t>(head->body_length));
    task.request.remote_addr = c.addr;
    task.request.remote_port = c.port;
    task.keep_alive = head->keep_alive;
    c.buffer.erase(0, total);
    c.started.reset();
    c.continue_sent = false;
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c.fd, nullptr);
    task.conn = std::move(c);
    const int fd = task.conn.fd;
    conns.erase(fd);
    {
      std::lock_guard<std::mutex> lock(mutex);
      tasks.push_back(std::move(task));
    }
    work.notify_one();
    return false;
  }

  void add(Conn c) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = c.fd;
    const int fd = c.fd;
    conns[fd] = std::move(c);
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
      ::close(fd);
      conns.erase(fd);
      --open;
      return;
    }
    advance(conns[fd]);  // a pipelined request may be whole already
  }

  // Past max_connections: the reader's connection that has waited longest (idle, or slowest to send
  // its request) makes room.
  void evict_one() {
    auto oldest = conns.end();
    for (auto it = conns.begin(); it != conns.end(); ++it) {
      const auto t = it->second.started.value_or(it->second.since);
      if (oldest == conns.end() || t < oldest->second.started.value_or(oldest->second.since)) oldest = it;
    }
    if (oldest == conns.end()) return;
    ++evicted;
    close_conn(oldest->first);
  }

  void accept_all() {
    while (true) {
      sockaddr_storage peer{};
      socklen_t len = sizeof peer;
      const int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        return;  // EAGAIN, or out of descriptors: the rest wait in the backlog
      }
      ++open;
      while (open > options.max_connections && !conns.empty()) evict_one();
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      Conn c;
      c.fd = fd;
      c.since = Clock::now();
      char host[NI_MAXHOST] = "", serv[NI_MAXSERV] = "";
      if (getnameinfo(reinterpret_cast<sockaddr*>(&peer), len, host, sizeof host, serv, sizeof serv,
                      NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
        c.addr = host;
        c.port = std::atoi(serv);
      }
      add(std::move(c));
    }
  }

  void read_from(int fd) {
    auto it = conns.find(fd);
    if (it == conns.end()) return;
    Conn& c = it->second;
    char chunk[16384];
    if (c.lingering_until) {  // refused: drop what still comes until the client closes
      while (true) {
        const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        close_conn(fd);
        return;
      }
    }
    while (true) {
      const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
      if (n > 0) {
        c.buffer.append(chunk, static_cast<size_t>(n));
        // Stop reading what cannot be a request this server takes; advance() refuses it.
        if (static_cast<int64_t>(c.buffer.size()) > options.max_head_bytes + options.max_body_bytes + 4) break;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      // Closed by the client (or reset). A client that half-closed after a whole request still gets
      // its answer: that request goes to a worker first, and the connection is not kept after it.
      if (n == 0 && !advance(c)) return;
      close_conn(fd);
      return;
    }
    advance(c);
  }

  void expire(Clock::time_point now) {
    std::vector<int> late, idle;
    for (auto& [fd, c] : conns) {
      if (c.lingering_until) {
        if (now > *c.lingering_until) idle.push_back(fd);
      } else if (c.started && now - *c.started > std::chrono::duration<double>(options.request_timeout)) late.push_back(fd);
      else if (!c.started && now - c.since > std::chrono::duration<double>(options.idle_timeout)) idle.push_back(fd);
    }
    for (int fd : late) {
      ++timed_out;
      refuse(conns[fd], 408, "the request did not arrive within " + fmt::format("{:g}", options.request_timeout) +
                                 " s (serve.request_timeout)");
    }
    for (int fd : idle) close_conn(fd);
  }

  void read_loop() {
    std::vector<epoll_event> events(256);
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (stopping) break;
      }
      const int n = epoll_wait(epoll_fd, events.data(), static_cast<int>(events.size()), 100);
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        if (fd == listen_fd) {
          accept_all();
        } else if (fd == wake_fd) {
          uint64_t count;
          [[maybe_unused]] ssize_t r = ::read(wake_fd, &count, sizeof count);
          std::deque<Conn> back;
          {
            std::lock_guard<std::mutex> lock(mutex);
            back.swap(returned);
          }
          for (auto& c : back) add(std::move(c));
        } else {
          read_from(fd);
        }
      }
      expire(Clock::now());
    }
  }

  void work_loop() {
    while (true) {
      Task task;
      {
        std::unique_lock<std::mutex> lock(mutex);
        work.wait(lock, [&] { return !tasks.empty() || stopping; });
        if (tasks.empty()) return;
        task = std::move(tasks.front());
        tasks.pop_front();
      }
      Conn& c = task.conn;
      set_blocking(c.fd, true);
      const timeval timeout{kSendTimeoutSeconds, 0};
      setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
      HttpResponder responder(c.fd, task.keep_alive);
      try {
        handler(task.request, responder);
      } catch (const std::exception& e) {
        spdlog::error("serve: {} {}: {}", task.request.method, task.request.path, e.what());
      }
      // A handler that returns without answering has seen its client go away (499 in the metrics).
      if (!responder.responded() && !responder.peer_closed())
        responder.send(500, "application/json", error_body(500, "the request was not answered"));
      bool keep = responder.reusable();
      if (keep) {
        std::lock_guard<std::mutex> lock(mutex);
        keep = !stopping;
        if (keep) {
          set_blocking(c.fd, false);
          c.since = Clock::now();
          returned.push_back(std::move(c));
        }
      }
      if (keep) {
        wake();
      } else {
        ::shutdown(c.fd, SHUT_RDWR);
        ::close(c.fd);
        --open;
      }
    }
  }
};

HttpFront::HttpFront(HttpFrontOptions options, HttpHandler handler) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.options = std::move(options);
  s.handler = std::move(handler);
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  const std::string port = std::to_string(s.options.port);
  if (getaddrinfo(s.options.host.c_str(), port.c_str(), &hints, &found) != 0 || !found)
    throw InputError("serve: cannot resolve the address '" + s.options.host + "'", "set serve.host to an address of this machine");
  std::string why;
  for (addrinfo* a = found; a && s.listen_fd < 0; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    // The backlog: a burst of clients (16 streams starting at once) must not overflow the accept
    // queue, or the kernel makes each one past it resend its SYN a second later.
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 1024) == 0) {
      s.listen_fd = fd;
    } else {
      why = std::strerror(errno);
      ::close(fd);
    }
  }
  freeaddrinfo(found);
  if (s.listen_fd < 0)
    throw InputError("serve: cannot listen on " + s.options.host + ":" + port + " (" + why + ")",
                     "is another server using the port? set serve.port (0 picks a free one)");
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  getsockname(s.listen_fd, reinterpret_cast<sockaddr*>(&bound), &len);
  s.port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                       : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  s.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  s.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s.epoll_fd < 0 || s.wake_fd < 0) throw std::runtime_error(std::string("serve: epoll/eventfd: ") + std::strerror(errno));
  for (int fd : {s.listen_fd, s.wake_fd}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(s.epoll_fd, EPOLL_CTL_ADD, fd, &ev);
  }
}

HttpFront::~HttpFront() {
  stop();
  State& s = *state_;
  for (int fd : {s.listen_fd, s.epoll_fd, s.wake_fd})
    if (fd >= 0) ::close(fd);
}

int HttpFront::port() const { return state_->port; }

void HttpFront::start() {
  State& s = *state_;
  if (s.started) return;
  s.started = true;
  s.reader = std::thread([&s] { s.read_loop(); });
  for (int i = 0; i < std::max(1, s.options.workers); ++i) s.workers.emplace_back([&s] { s.work_loop(); });
}

void HttpFront::stop() {
  State& s = *state_;
  if (!s.started || s.stopped) return;
  s.stopped = true;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.stopping = true;
  }
  s.wake();
  s.work.notify_all();
  s.reader.join();
  for (auto& w : s.workers) w.join();  // each finishes its request; queued ones are answered first
  for (auto& [fd, c] : s.conns) ::close(fd);
  s.conns.clear();
  for (auto& c : s.returned) ::close(c.fd);
  s.returned.clear();
}

HttpFrontCounters HttpFront::counters() const {
  const State& s = *state_;
  return {s.open.load(), s.timed_out.load(), s.refused_large.load(), s.evicted.load()};
}

}  // namespace lf::serve
