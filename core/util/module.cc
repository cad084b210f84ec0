#include "core/util/module.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

namespace cohort::core::module {
namespace {

std::string core_directory() {
  Dl_info info{};
  // Any function of libcohort_core tells where the library is.
  if (dladdr(reinterpret_cast<void*>(&core_directory), &info) == 0 || !info.dli_fname) return ".";
  // The loader's name for it may run through an RPATH ("/usr/bin/../lib/..."): say it plainly.
  char* real = realpath(info.dli_fname, nullptr);
  const std::string file = real ? real : info.dli_fname;
  std::free(real);
  const size_t slash = file.rfind('/');
  return slash == std::string::npos ? "." : file.substr(0, slash);
}

// "libcudnn.so.9: cannot open shared object file: No such file or directory" names the library
// the dynamic linker could not find.
std::string missing_library(const std::string& error) {
  const std::string marker = ": cannot open shared object file";
  const size_t at = error.find(marker);
  if (at == std::string::npos) return "";
  std::string lib = error.substr(0, at);
  const size_t slash = lib.rfind('/');
  return slash == std::string::npos ? lib : lib.substr(slash + 1);
}

}  // namespace

std::string directory() {
  static const std::string dir = core_directory();
  return dir;
}

std::string path(const std::string& name) { return directory() + "/libcohort_" + name + ".so"; }

void* open(const std::string& name, const char* symbol, bool global, std::string& why) {
  return open_file(path(name), name, symbol, global, why);
}

void* open_file(const std::string& file, const std::string& name, const char* symbol, bool global,
                std::string& why) {
  // dlerror's text is per thread but dlopen's failure and its reading must not interleave with
  // another module's.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  if (access(file.c_str(), R_OK) != 0) {
    // The Debian packages (cmake/Packaging.cmake) that hold each module.
    const std::string package = name == "mpi"    ? "cohort-mpi"
                                : name == "grpc" ? "cohort"
                                                 : "cohort-cuda";
    why = "cohort's " + name + " module is not installed (" + file + "; the " + package +
          " package has it)";
    return nullptr;
  }
  void* handle = dlopen(file.c_str(), RTLD_NOW | (global ? RTLD_GLOBAL : RTLD_LOCAL));
  if (!handle) {
    const char* e = dlerror();
    const std::string error = e ? e : "unknown error";
    const std::string lib = missing_library(error);
    if (!lib.empty() && file.size() >= lib.size() &&
        file.compare(file.size() - lib.size(), lib.size(), lib) != 0)
      why = lib + " is not installed (cohort's " + name + " module " + file + " needs it)";
    else
      why = "cohort's " + name + " module " + file + " cannot be loaded: " + error;
    return nullptr;
  }
  void* entry = dlsym(handle, symbol);
  if (!entry) {
    why = "cohort's " + name + " module " + file + " has no " + symbol +
          " (it is from another build of cohort)";
    return nullptr;
  }
  return entry;
}

bool is_loaded(const std::string& name) {
  void* handle = dlopen(path(name).c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (!handle) return false;
  dlclose(handle);  // RTLD_NOLOAD took a reference
  return true;
}

}  // namespace cohort::core::module
