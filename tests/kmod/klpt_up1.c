// SPDX-License-Identifier: GPL-2.0
/* klpt_up1: version 1 of the upgrade pair (see klpt_release.h). */
#define KLPT_REPLACE false
#include "klpt_release.h"
MODULE_DESCRIPTION("klptrace lab: upgrade pair, version 1");
