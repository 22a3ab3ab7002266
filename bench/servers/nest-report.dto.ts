import { IsString, Matches } from 'class-validator';

/** The body of `POST /reports` in both Nest servers: the same DTO, checked by the same pipe. */
export class ReportBody {
  @IsString()
  @Matches(/^\d{4}-\d{2}$/)
  month!: string;
}
