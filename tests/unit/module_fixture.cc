// Two tiny libraries for the module loader's tests: a module that needs a library the dynamic
// linker cannot find (the build leaves it out of every search path), as a module needing cuDNN
// is on a node without it.
#ifdef COHORT_TEST_MODULE
int cohort_test_absent_value();
extern "C" int cohort_test_entry() { return cohort_test_absent_value(); }
#else
int cohort_test_absent_value() { return 7; }
#endif
