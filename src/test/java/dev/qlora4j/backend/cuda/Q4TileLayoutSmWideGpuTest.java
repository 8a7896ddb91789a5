package dev.qlora4j.backend.cuda;

import dev.qlora4j.TemporaryProperty;

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;

/**
 * Q4TileLayoutGpuTest's cases with the SM-wide persistent kernels for one row of x (the "_s3" forms,
 * -Dqlora4j.nf4.persistentForm=s3; native/nf4_gemv_team.cuh): the single-weight, joint gate / up and grouped q / k / v
 * decodes against the row layout's one-block-a-tile kernels and against each other, bit for bit. The cases whose grid
 * has more tile walkers than tiles (or fewer than a block's three groups) go through the launcher's other forms.
 */
@Tag("gpu")
class Q4TileLayoutSmWideGpuTest extends Q4TileLayoutGpuTest {
    private static TemporaryProperty form;

    @BeforeAll
    static void smWide() { form = TemporaryProperty.set(Nf4TileGemvKernels.PERSISTENT_FORM_PROPERTY, "s3"); }

    @AfterAll
    static void back() { if (form != null) form.close(); }
}
