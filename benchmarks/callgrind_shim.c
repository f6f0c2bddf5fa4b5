/* Valgrind client requests for benchmarks/cpu_cost.py --callgrind-shim: zero callgrind's
 * counters before a batch of requests and dump them after it, so that each dump holds the
 * instructions of that batch only. Built by run.py (gcc + valgrind's headers). */
#include <valgrind/callgrind.h>

int fdbs_on_valgrind(void) { return RUNNING_ON_VALGRIND; }
void fdbs_zero(void) { CALLGRIND_ZERO_STATS; }
void fdbs_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
