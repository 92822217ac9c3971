# utf8proc, doctest and libmicrohttpd: the system's, or local copies under build/deps/.
# Included by the Makefile and dev/cuda_on_cpu/Makefile (REPO = the repo root),
# after their first target, so that the rules here are not `make`'s default goal.
# When the compiler cannot find utf8proc.h (doctest/doctest.h), or with
# `make LOCAL_DEPS=1`, dev/fetch/fetch_deps.sh fetches the Debian package
# into build/deps/ and the build uses it from there: headers with -isystem,
# utf8proc linked statically. Sets DEPS_CPPFLAGS, UTF8PROC_LIB and the
# order-only prerequisites UTF8PROC_DEP and DOCTEST_DEP. libmicrohttpd (only
# ./serve links it) the same way: MHD_LIB and MHD_DEP; its local copy is the
# shared library, found at run time through an rpath relative to ./serve.
DEPS_DIR := $(REPO)/build/deps
has_header = $(shell printf '\043include <$(1)>\n' | $(CC) $(CPPFLAGS) -E -x c - >/dev/null 2>&1 && echo yes)
ifeq ($(LOCAL_DEPS),1)
  UTF8PROC_LOCAL = yes
  DOCTEST_LOCAL = yes
  MHD_LOCAL = yes
else
  UTF8PROC_LOCAL = $(if $(call has_header,utf8proc.h),,yes)
  DOCTEST_LOCAL = $(if $(call has_header,doctest/doctest.h),,yes)
  MHD_LOCAL = $(if $(call has_header,microhttpd.h),,yes)
endif
DEPS_CPPFLAGS =
UTF8PROC_LIB = -lutf8proc
UTF8PROC_DEP =
DOCTEST_DEP =
MHD_LIB = -lmicrohttpd
MHD_DEP =
ifeq ($(UTF8PROC_LOCAL),yes)
  DEPS_CPPFLAGS = -isystem $(DEPS_DIR)/include
  UTF8PROC_LIB = $(DEPS_DIR)/lib/libutf8proc.a
  UTF8PROC_DEP = $(DEPS_DIR)/lib/libutf8proc.a
endif
ifeq ($(DOCTEST_LOCAL),yes)
  DEPS_CPPFLAGS = -isystem $(DEPS_DIR)/include
  DOCTEST_DEP = $(DEPS_DIR)/include/doctest/doctest.h
endif
ifeq ($(MHD_LOCAL),yes)
  DEPS_CPPFLAGS = -isystem $(DEPS_DIR)/include
  MHD_LIB = $(DEPS_DIR)/lib/libmicrohttpd.so.12 -Wl,-rpath,'$$ORIGIN/build/deps/lib'
  MHD_DEP = $(DEPS_DIR)/include/microhttpd.h $(DEPS_DIR)/lib/libmicrohttpd.so.12
endif
$(DEPS_DIR)/lib/libutf8proc.a:
	@cd $(REPO) && LOCAL_DEPS=$(LOCAL_DEPS) sh dev/fetch/fetch_deps.sh utf8proc
$(DEPS_DIR)/include/doctest/doctest.h:
	@cd $(REPO) && LOCAL_DEPS=$(LOCAL_DEPS) sh dev/fetch/fetch_deps.sh doctest
$(DEPS_DIR)/include/microhttpd.h:
	@cd $(REPO) && LOCAL_DEPS=$(LOCAL_DEPS) sh dev/fetch/fetch_deps.sh microhttpd
$(DEPS_DIR)/lib/libmicrohttpd.so.12:
	@cd $(REPO) && LOCAL_DEPS=$(LOCAL_DEPS) sh dev/fetch/fetch_deps.sh microhttpd-lib
