#pragma once
// Result<T>: the value of an operation that can fail for a reason outside the program's control
// (a file, a peer, the agent, the kernel). The error is a sentence meant for an operator: it names
// the object that was wrong and, where possible, what to do next. Errors are values; they never
// cross module boundaries as exceptions.

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace spiffe_tunnel::base {

struct Error {
  std::string message;

  // Prefixes the message with context, e.g. Error{"bad char"}.wrap("flag --allow-id") gives
  // "flag --allow-id: bad char".
  Error wrap(std::string_view context) const {
    return Error{std::string(context) + ": " + message};
  }
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}     // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const {
    assert(!ok());
    return std::get<1>(v_);
  }

 private:
  std::variant<T, Error> v_;
};

// Result<void>: success or an Error.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT: implicit by design

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const {
    assert(!ok_);
    return error_;
  }

 private:
  Error error_;
  bool ok_ = true;
};

using Status = Result<void>;

inline Error make_error(std::string message) { return Error{std::move(message)}; }

}  // namespace spiffe_tunnel::base
