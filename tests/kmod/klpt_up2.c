// SPDX-License-Identifier: GPL-2.0
/* klpt_up2: version 2 of the upgrade pair (see klpt_release.h). */
#define KLPT_REPLACE false
#include "klpt_release.h"
MODULE_DESCRIPTION("klptrace lab: upgrade pair, version 2");
