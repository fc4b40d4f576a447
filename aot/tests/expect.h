/* The C tests' one assertion: counts and prints a failure, and goes on. */
#ifndef MIRASOL_EXPECT_H
#define MIRASOL_EXPECT_H

#include <stdio.h>

static int failures;

#define EXPECT(cond, ...) \
  do { \
    if (!(cond)) { \
      failures++; \
      printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      printf(__VA_ARGS__); \
      printf("\n"); \
    } \
  } while (0)

/* "passed"/"FAILED" and the exit status of a test program. */
static inline int expect_summary(void) {
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
  return failures != 0;
}

#endif
