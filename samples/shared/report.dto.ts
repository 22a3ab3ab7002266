import { IsInt, Max, Min } from 'class-validator';

/** The body of `POST /reports`, validated before anything is enqueued. */
export class ReportRequest {
  @IsInt()
  @Min(1)
  @Max(1000)
  steps!: number;

  @IsInt()
  @Min(0)
  @Max(60000)
  stepMs!: number;
}
