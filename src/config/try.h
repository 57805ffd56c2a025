#pragma once
// ST_TRY(status): returns the error of a failed base::Status from the enclosing function, whose
// return type is a base::Result. The config readers check dozens of values in a row; this keeps
// each check one line.

#define ST_TRY(expr)      \
  do {                    \
    auto _st = (expr);    \
    if (!_st) {           \
      return _st.error(); \
    }                     \
  } while (0)
