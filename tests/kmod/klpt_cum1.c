// SPDX-License-Identifier: GPL-2.0
/* klpt_cum1: release 1 of the cumulative livepatch (see klpt_cumulative.h). */
#include "klpt_cumulative.h"
MODULE_DESCRIPTION("klptrace lab: cumulative livepatch, release 1");
